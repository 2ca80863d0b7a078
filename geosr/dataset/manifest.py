"""The prepared dataset's ``manifest.json``: grids, layers, statistics and samples.

A prepared dataset is a folder::

    manifest.json
    coarse.tif        one band per sample, on the coarse grid
    target.tif        one band per sample, on the fine grid (training datasets only)
    aux/<name>.tif    one band each, on the fine grid

Layer paths in the manifest are relative to the folder, so it can be moved.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from geosr import __version__
from geosr.constraints import ValidRange
from geosr.errors import InputError
from geosr.grid import Grid

MANIFEST_NAME = "manifest.json"
FORMAT = "geosr-prepared"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LayerStats:
    """Statistics over a layer's valid cells (all bands), used for normalisation."""

    mean: float
    std: float
    min: float
    max: float
    count: int
    valid_fraction: float


@dataclass(frozen=True)
class Layer:
    """One aligned raster of the dataset.

    Attributes:
        name: layer name (``coarse``, ``target`` or the aux name).
        path: file path relative to the dataset folder.
        grid: ``"fine"`` or ``"coarse"``: which grid the file is on.
        bands: band count.
        units: units string ('' when unknown).
        categorical: True for class rasters (resampled with mode/nearest).
        classes: sorted class values for categorical layers.
        source: the source file(s) as given by the user.
        stats: statistics over valid cells.
    """

    name: str
    path: str
    grid: str
    bands: int
    units: str = ""
    categorical: bool = False
    classes: tuple[float, ...] = ()
    source: tuple[str, ...] = ()
    stats: LayerStats | None = None


@dataclass(frozen=True)
class Sample:
    """One training/inference sample: band ``band`` of coarse.tif (and target.tif)."""

    id: str
    band: int
    source: str
    source_band: int
    date: str = ""


@dataclass(frozen=True)
class Manifest:
    """Everything a consumer needs to use a prepared dataset."""

    fine_grid: Grid
    coarse_grid: Grid
    factor: int
    res_m: float
    variable: str
    coarse: Layer
    target: Layer | None
    aux: tuple[Layer, ...]
    samples: tuple[Sample, ...]
    units: str = ""
    long_name: str = ""
    valid_range: ValidRange | None = None
    geosr_version: str = __version__
    root: Path = field(default=Path("."), compare=False)

    def path_of(self, layer: Layer) -> Path:
        """Absolute path of a layer's file."""
        return self.root / layer.path

    def aux_layer(self, name: str) -> Layer:
        for layer in self.aux:
            if layer.name == name:
                return layer
        raise InputError(f"aux layer {name!r} is not in the dataset at {self.root}; "
                         f"available: {', '.join(a.name for a in self.aux) or 'none'}")

    def to_dict(self) -> dict:
        def layer(la: Layer | None) -> dict | None:
            if la is None:
                return None
            d = asdict(la)
            d["classes"] = list(la.classes)
            d["source"] = list(la.source)
            return d

        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "geosr_version": self.geosr_version,
            "fine_grid": self.fine_grid.to_dict(), "coarse_grid": self.coarse_grid.to_dict(),
            "factor": self.factor, "res_m": self.res_m,
            "variable": self.variable, "units": self.units, "long_name": self.long_name,
            "valid_range": str(self.valid_range) if self.valid_range is not None else None,
            "coarse": layer(self.coarse), "target": layer(self.target),
            "aux": [layer(a) for a in self.aux],
            "samples": [asdict(s) for s in self.samples],
        }

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, d: dict, root: Path) -> Manifest:
        def layer(x: dict | None) -> Layer | None:
            if x is None:
                return None
            stats = LayerStats(**x["stats"]) if x.get("stats") else None
            return Layer(
                name=str(x["name"]), path=str(x["path"]), grid=str(x["grid"]),
                bands=int(x["bands"]),
                units=str(x.get("units", "")), categorical=bool(x.get("categorical", False)),
                classes=tuple(float(c) for c in x.get("classes", ())),
                source=tuple(str(s) for s in x.get("source", ())), stats=stats,
            )

        return cls(
            fine_grid=Grid.from_dict(d["fine_grid"]), coarse_grid=Grid.from_dict(d["coarse_grid"]),
            factor=int(d["factor"]), res_m=float(d["res_m"]), variable=str(d["variable"]),
            units=str(d.get("units", "")), long_name=str(d.get("long_name", "")),
            valid_range=ValidRange.parse(d["valid_range"]) if d.get("valid_range") else None,
            coarse=layer(d["coarse"]), target=layer(d.get("target")),
            aux=tuple(layer(a) for a in d.get("aux", [])),
            samples=tuple(Sample(**s) for s in d["samples"]),
            geosr_version=str(d.get("geosr_version", "")), root=root,
        )


def read_manifest(folder: str | Path) -> Manifest:
    """Read and check a prepared dataset; every problem is a one-line :class:`InputError`."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.exists():
        raise InputError(f"{folder}: not found; expected a dataset folder made by `geosr prepare`")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; expected a dataset made by `geosr prepare`")
    if not path.exists():
        raise InputError(
            f"{folder}: no {MANIFEST_NAME}; expected a dataset made by `geosr prepare`"
        )
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: damaged ({e}); re-run `geosr prepare`") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise InputError(f"{path}: not a geosr prepared-dataset manifest (format "
                         f"{d.get('format') if isinstance(d, dict) else None!r}); "
                         f"expected {FORMAT!r}")
    if d.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: format_version {d.get('format_version')!r} is not supported; "
                         f"expected {FORMAT_VERSION}: re-run `geosr prepare` with this version")
    try:
        m = Manifest.from_dict(d, folder)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: damaged or incomplete ({type(e).__name__}: {e}); re-run "
                         "`geosr prepare`") from e
    for la in (m.coarse, m.target, *m.aux):
        if la is not None and not m.path_of(la).exists():
            raise InputError(f"{path}: layer {la.name!r} file {la.path} is missing; re-run "
                             "`geosr prepare`")
    if m.fine_grid.width != m.coarse_grid.width * m.factor or \
            m.fine_grid.height != m.coarse_grid.height * m.factor:
        raise InputError(f"{path}: fine and coarse grids are not nested by factor {m.factor}; "
                         "re-run `geosr prepare`")
    return m
