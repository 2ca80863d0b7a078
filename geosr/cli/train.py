"""`geosr train` (not implemented yet)."""

from __future__ import annotations

from geosr.cli._app import GeosrCommand, app
from geosr.errors import ProcessingError


@app.command(name="train", cls=GeosrCommand, context_settings={"ignore_unknown_options": True,
                                                           "allow_extra_args": True})
def train_cmd() -> None:
    """Not implemented yet."""
    raise ProcessingError("train: not implemented yet")
