"""Command-line interface: ``geosr prepare | train | downscale | validate``.

Each verb lives in its own module that parses options, makes one library call and
renders the result; nothing else.
"""

from geosr.cli import downscale, prepare, train, validate  # noqa: F401,E402  (register verbs)
from geosr.cli._app import app

__all__ = ["app"]
