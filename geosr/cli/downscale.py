"""`geosr downscale` (not implemented yet)."""

from __future__ import annotations

from geosr.cli._app import GeosrCommand, app
from geosr.errors import ProcessingError


@app.command(name="downscale", cls=GeosrCommand, context_settings={"ignore_unknown_options": True,
                                                           "allow_extra_args": True})
def downscale_cmd() -> None:
    """Not implemented yet."""
    raise ProcessingError("downscale: not implemented yet")
