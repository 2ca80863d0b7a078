"""Error hierarchy. Each error carries the process exit code the CLI uses for it.

Input and usage problems (a file, an option, a model that does not fit) exit 2;
failures while doing valid work exit 1. Messages are one line that names the file or
option, the value found and what was expected.
"""


class GeosrError(Exception):
    """Root of every error geosr raises on purpose."""

    exit_code = 1


class InputError(GeosrError, ValueError):
    """A file, option or value given by the user is unusable (exit code 2)."""

    exit_code = 2


class RasterReadError(InputError, OSError):
    """A raster could not be opened or read: missing, not a raster, corrupt."""


class GridError(InputError):
    """Grids cannot be built or reconciled: no CRS, no overlap, bad resolution/factor."""


class BundleError(InputError):
    """A model bundle is corrupt, from an incompatible version, or does not fit the inputs."""


class OutputExistsError(InputError):
    """The output exists and `--overwrite` was not given."""


class ProcessingError(GeosrError, RuntimeError):
    """Valid work failed at run time (disk full, device failure...); exit code 1."""
