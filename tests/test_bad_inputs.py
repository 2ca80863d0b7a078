"""The bad-input matrix: every verb, many bad inputs, one contract.

For each case: the exit code (2 input/usage, 1 run-time), exactly one line on stderr
that names the file or option (and says what was found and what was expected), no
traceback, and nothing left behind: no output under the final name, no temporary
files, no new or modified file in any folder the command was pointed at.
"""

from __future__ import annotations

import errno
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from _helpers_train import TINY_ARCH_CLI, make_dataset, make_scene
from affine import Affine
from conftest import terrain, write_raster
from rasterio.errors import RasterioIOError
from typer.testing import CliRunner

import geosr.inference.run as ds
from geosr.cli import app
from geosr.io.atomic import TMP_TAG

runner = CliRunner()
ORIGIN = (600_000.0, 5_150_000.0)
ROOT = os.geteuid() == 0
CUDA = torch.cuda.is_available()


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]          # {name} placeholders are replaced by fixture paths
    code: int
    needles: tuple[str, ...]  # all must appear in the error line
    out: str = "{out}"        # the output that must not exist afterwards
    fault: str = ""           # a fault injected for the run (see FAULTS)
    needs: str = ""           # "non-root" (folder permissions) or "no-cuda"


def _bundle(path: Path, *, aux: tuple[str, ...], factor: int = 8, res_m: float = 1000.0) -> Path:
    """An untrained tiny generator saved as a real bundle."""
    from geosr.model.bundle import AuxChannelSpec, save_bundle
    from geosr.nn import Generator, NetConfig

    torch.manual_seed(0)
    cfg = NetConfig(factor=factor, n_aux=len(aux), coarse_width=8, branch_width=4, up_width=8,
                    fine_width=8, n_blocks=1, fine_blocks=1)
    save_bundle(path, config=cfg, aux=tuple(AuxChannelSpec(a, mean=800.0, std=400.0)
                                            for a in aux),
                factor=factor, res_m=res_m, variable="t2m", units="degC",
                norm={"coarse": {"mean": 10.0, "std": 5.0}, "target": {"mean": 10.0, "std": 5.0}},
                state_dict=Generator(cfg).state_dict())
    return path


def _rewrite_bundle(src: Path, dst: Path, **changes) -> Path:
    payload = torch.load(src, weights_only=True)
    payload.update(changes)
    buf = io.BytesIO()
    torch.save(payload, buf)
    dst.write_bytes(buf.getvalue())
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad")
    dem = terrain((64, 64))
    t = np.stack([15 - 0.0065 * dem + k for k in range(3)]).astype(np.float32)
    f = {}
    f["target"] = write_raster(d / "target.tif", t, res=1000, origin=ORIGIN)
    f["dem"] = write_raster(d / "dem.tif", dem, res=1000, origin=ORIGIN)
    f["coarse2"] = write_raster(d / "coarse2.tif", t[:2, ::8, ::8], res=8000, origin=ORIGIN)
    f["far"] = write_raster(d / "far.tif", dem, res=1000, origin=(100_000.0, 4_000_000.0))
    f["nocrs"] = write_raster(d / "nocrs.tif", dem, crs=None)
    f["nogeo"] = write_raster(d / "nogeo.tif", dem, transform=Affine.identity())  # CRS only
    f["allnan"] = write_raster(d / "allnan.tif", np.full((64, 64), np.nan), res=1000, origin=ORIGIN)
    f["geo"] = write_raster(d / "geo.tif", dem, crs="EPSG:4326",
                            transform=Affine(0.01, 0, -120.0, 0, -0.01, -10.0))
    # downscale inputs: 8 x 8 cells of 8 km over the 1 km DEM (factor 8)
    coarse = t[:2].reshape(2, 8, 8, 8, 8).mean(axis=(2, 4))
    f["coarse"] = write_raster(d / "coarse.tif", coarse, res=8000, origin=ORIGIN)
    f["coarse_nan"] = write_raster(d / "coarse_nan.tif", np.full((2, 8, 8), np.nan),
                                   res=8000, origin=ORIGIN)
    f["ndvi"] = write_raster(d / "ndvi.tif", np.full((64, 64), 0.5), res=1000, origin=ORIGIN)
    f["dem_half"] = write_raster(d / "dem_half.tif", dem[:, :32], res=1000, origin=ORIGIN)
    inf = coarse.copy()
    inf[:, 0, 0] = np.inf
    f["coarse_inf"] = write_raster(d / "coarse_inf.tif", inf, res=8000, origin=ORIGIN)
    ints = np.round(coarse * 10).astype(np.int16)
    ints[:, 0, 0] = -9999
    f["coarse_int"] = write_raster(d / "coarse_int.tif", ints, res=8000, origin=ORIGIN,
                                   dtype="int16", nodata=-9999)
    f["model"] = _bundle(d / "model.geosr", aux=("dem",))
    f["model_v9"] = _rewrite_bundle(Path(f["model"]), d / "model_v9.geosr", format_version=9)
    f["model_other_aux"] = _bundle(d / "model_other_aux.geosr", aux=("slope", "ndvi"))
    good = Path(f["model"]).read_bytes()
    (d / "model_cut.geosr").write_bytes(good[: len(good) // 2])
    f["model_cut"] = d / "model_cut.geosr"
    (d / "model_header.geosr").write_bytes(good[:1] + bytes([good[1] ^ 1]) + good[2:])
    f["model_header"] = d / "model_header.geosr"
    meta = json.loads(torch.load(f["model"], weights_only=True)["meta"])
    f["model_halo"] = _rewrite_bundle(Path(f["model"]), d / "model_halo.geosr", meta=json.dumps(
        {**meta, "halo_coarse": meta["halo_coarse"] ^ 1}))
    text = d / "notes.tif"
    text.write_text("this is not a raster\n")
    f["text"] = text
    good = Path(f["target"]).read_bytes()
    trunc = d / "truncated.tif"
    trunc.write_bytes(good[: len(good) // 3])
    f["truncated"] = trunc
    f["missing"] = d / "missing.tif"
    ro = d / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    f["readonly"] = ro
    f["nodir"] = d / "no" / "such" / "folder"
    damaged = d / "damaged_ds"
    damaged.mkdir()
    (damaged / "manifest.json").write_text("{ not json")
    f["damaged_ds"] = damaged
    nonempty = d / "nonempty"
    nonempty.mkdir()
    (nonempty / "keep.txt").write_text("x")
    f["nonempty"] = nonempty
    existing = d / "existing"
    existing.write_bytes(b"precious")
    f["existing"] = existing
    # training datasets: with a target (factor 4, aux dem) and an inference one without
    f["ds"] = make_dataset(d, name="ds")
    from geosr.dataset.prepare import PrepareConfig, prepare
    from geosr.sources import LayerSpec

    src = make_scene(d / "infer_src", size=16, days=1)
    f["infer_ds"] = d / "infer_ds"
    prepare(PrepareConfig(out_dir=f["infer_ds"], coarse=(str(src["target"]),),
                          aux=(LayerSpec("dem", str(src["dem"])),), res_m=250.0, factor=4))
    return {k: str(v) for k, v in f.items()}


PREPARE = [
    Case("prepare-missing-file",
         ["prepare", "--target", "{missing}", "--factor", "8", "-o", "{out}"], 2,
         ("missing.tif", "not found")),
    Case("prepare-not-a-raster",
         ["prepare", "--target", "{text}", "--factor", "8", "-o", "{out}"], 2,
         ("notes.tif", "not a readable raster")),
    Case("prepare-truncated",
         ["prepare", "--target", "{truncated}", "--factor", "8", "-o", "{out}"], 2,
         ("truncated.tif", "truncated or corrupt")),
    Case("prepare-no-crs", ["prepare", "--target", "{nocrs}", "--factor", "8", "-o", "{out}"],
         2, ("nocrs.tif", "no CRS")),
    Case("prepare-no-geotransform",
         ["prepare", "--target", "{nogeo}", "--factor", "8", "-o", "{out}"], 2,
         ("nogeo.tif", "no geotransform")),
    Case("prepare-no-overlap",
         ["prepare", "--target", "{target}", "--aux", "{far}", "--factor", "8", "-o", "{out}"], 2,
         ("far.tif", "overlap 0%")),
    Case("prepare-geographic-vs-projected-no-overlap",
         ["prepare", "--target", "{target}", "--aux", "{geo}", "--factor", "8", "-o", "{out}"],
         2, ("geo.tif", "overlap")),
    Case("prepare-all-nodata", ["prepare", "--target", "{allnan}", "--factor", "8", "-o", "{out}"],
         2, ("allnan.tif", "no valid pixels")),
    Case("prepare-band-count-mismatch",
         ["prepare", "{coarse2}", "--target", "{target}", "-o", "{out}", "--res", "1000"],
         2, ("COARSE has 2 bands", "--target has 3")),
    Case("prepare-res-negative", ["prepare", "--target", "{target}", "--factor", "8", "--res", "-1",
                                  "-o", "{out}"], 2, ("--res",)),
    Case("prepare-res-absurd", ["prepare", "--target", "{target}", "--factor", "8", "--res", "1e12",
                                "-o", "{out}"], 2, ("--res",)),
    Case("prepare-factor-too-big",
         ["prepare", "--target", "{target}", "--factor", "65", "-o", "{out}"], 2,
         ("--factor", "65")),
    Case("prepare-factor-not-integer", ["prepare", "--target", "{target}", "--factor", "2.5",
                                        "-o", "{out}"], 2, ("--factor",)),
    Case("prepare-factor-missing", ["prepare", "--target", "{target}", "-o", "{out}"],
         2, ("--factor",)),
    Case("prepare-geographic-crs", ["prepare", "--target", "{target}", "--factor", "8", "--crs",
                                    "EPSG:4326", "-o", "{out}"], 2, ("--crs", "geographic")),
    Case("prepare-bad-crs", ["prepare", "--target", "{target}", "--factor", "8", "--crs", "EPSG:0",
                             "-o", "{out}"], 2, ("--crs",)),
    Case("prepare-bounds-outside", ["prepare", "--target", "{target}", "--factor", "8", "--bounds",
                                    "0", "0", "10", "10", "-o", "{out}"], 2, ("--bounds",)),
    Case("prepare-output-parent-missing", ["prepare", "--target", "{target}", "--factor", "8", "-o",
                                           "{nodir}"], 2, ("does not exist",), out="{nodir}"),
    Case("prepare-output-readonly", ["prepare", "--target", "{target}", "--factor", "8", "-o",
                                     "{readonly}/ds"], 2, ("not writable",), out="{readonly}/ds",
         needs="non-root"),
    Case("prepare-output-nonempty", ["prepare", "--target", "{target}", "--factor", "8", "-o",
                                     "{nonempty}"], 2, ("--overwrite",), out=""),
    Case("prepare-bad-aux-name", ["prepare", "--target", "{target}", "--factor", "8", "--aux",
                                  "9dem={dem}", "-o", "{out}"], 2, ("--aux", "9dem")),
    Case("prepare-duplicate-aux-name", ["prepare", "--target", "{target}", "--factor", "8", "--aux",
                                        "{dem}", "{dem}", "-o", "{out}"], 2, ("--aux", "dem")),
    Case("prepare-no-input", ["prepare", "-o", "{out}"], 2, ("no input",)),
    Case("prepare-unknown-option", ["prepare", "--resolution", "5", "-o", "{out}"], 2,
         ("--resolution",)),
]


# Fast training options, so that a case that wrongly passes the checks ends quickly.
FAST = ["--epochs", "1", "--patch", "4", "--batch-size", "4", "--steps-per-epoch", "2",
        "--device", "cpu", "--threads", "1", *TINY_ARCH_CLI]
MODEL = "{out}.geosr"


def _train(*args: str, ds: str = "{ds}", out: str = MODEL) -> list[str]:
    """``geosr train`` with the fast options; later options override earlier ones."""
    return ["train", ds, "-o", out, *FAST, *args]


TRAIN = [
    Case("train-dataset-missing", _train(ds="{missing}"), 2, ("missing.tif", "not found"),
         out=MODEL),
    Case("train-dataset-not-prepared", _train(ds="{nonempty}"), 2, ("nonempty", "manifest.json"),
         out=MODEL),
    Case("train-damaged-manifest", _train(ds="{damaged_ds}"), 2, ("manifest.json",), out=MODEL),
    Case("train-no-target", _train(ds="{infer_ds}"), 2, ("infer_ds", "no target"), out=MODEL),
    Case("train-unknown-aux", _train("--aux", "ndvi"), 2, ("--aux", "ndvi", "dem"), out=MODEL),
    Case("train-epochs-zero", _train("--epochs", "0"), 2, ("--epochs", "0"), out=MODEL),
    Case("train-epochs-not-a-number", _train("--epochs", "many"), 2, ("--epochs", "many"),
         out=MODEL),
    Case("train-batch-size-zero", _train("--batch-size", "0"), 2, ("--batch-size", "0"),
         out=MODEL),
    Case("train-patch-too-small", _train("--patch", "1"), 2, ("--patch", "1"), out=MODEL),
    Case("train-lr-negative", _train("--lr", "-0.1"), 2, ("--lr", "-0.1"), out=MODEL),
    Case("train-unknown-device", _train("--device", "tpu"), 2, ("--device", "tpu"), out=MODEL),
    Case("train-cuda-absent", _train("--device", "cuda"), 2, ("--device cuda", "no CUDA"),
         out=MODEL, needs="no-cuda"),
    Case("train-output-exists", _train(out="{existing}"), 2, ("existing", "--overwrite"), out=""),
    Case("train-output-folder-missing", _train(out="{nodir}/m.geosr"), 2,
         ("does not exist",), out="{nodir}/m.geosr"),
    Case("train-output-readonly", _train(out="{readonly}/m.geosr"), 2, ("not writable",),
         out="{readonly}/m.geosr", needs="non-root"),
    Case("train-resume-missing", _train("--resume", "{missing}.ckpt"), 2,
         ("--resume", "missing.tif.ckpt", "not found"), out=MODEL),
    Case("train-resume-not-a-checkpoint", _train("--resume", "{text}"), 2,
         ("--resume", "notes.tif"), out=MODEL),
    Case("train-resume-model-bundle", _train("--resume", "{model}"), 2,
         ("--resume", "model.geosr", "not a geosr training checkpoint"), out=MODEL),
]

OUT_TIF = "{out}.tif"


def _down(*args: str, src: str = "{coarse}", out: str = OUT_TIF) -> list[str]:
    """``geosr downscale`` of the 8 km input onto a 1 km grid, guided by the DEM."""
    return ["downscale", src, "-o", out, "--res", "1000", "--workers", "1", *args]


DOWNSCALE = [
    Case("downscale-missing-file", _down("--aux", "{dem}", src="{missing}"), 2,
         ("missing.tif", "not found"), out=OUT_TIF),
    Case("downscale-not-a-raster", _down("--aux", "{dem}", src="{text}"), 2,
         ("notes.tif", "not a readable raster"), out=OUT_TIF),
    Case("downscale-truncated", _down("--aux", "{dem}", "--res", "125", src="{truncated}"), 2,
         ("truncated.tif", "IReadBlock failed", "truncated or corrupt"), out=OUT_TIF),
    Case("downscale-no-crs", _down("--aux", "{dem}", src="{nocrs}"), 2,
         ("nocrs.tif", "no CRS"), out=OUT_TIF),
    Case("downscale-no-geotransform", _down("--aux", "{dem}", src="{nogeo}"), 2,
         ("nogeo.tif", "no geotransform"), out=OUT_TIF),
    Case("downscale-aux-missing", _down("--aux", "{missing}"), 2,
         ("missing.tif", "not found"), out=OUT_TIF),
    Case("downscale-all-nodata", _down("--aux", "{dem}", src="{coarse_nan}"), 2,
         ("coarse_nan.tif", "no valid"), out=OUT_TIF),
    Case("downscale-aux-no-overlap", _down("--aux", "{far}"), 2,
         ("--aux far", "far.tif", "overlap 0%"), out=OUT_TIF),
    Case("downscale-model-missing", _down("--aux", "{dem}", "--model", "{missing}.geosr"), 2,
         ("--model", "missing.tif.geosr"), out=OUT_TIF),
    Case("downscale-model-corrupt", _down("--aux", "{dem}", "--model", "{model_cut}"), 2,
         ("model_cut.geosr", "expected a model bundle"), out=OUT_TIF),
    Case("downscale-model-not-a-bundle", _down("--aux", "{dem}", "--model", "{text}"), 2,
         ("notes.tif", "not a valid model bundle"), out=OUT_TIF),
    Case("downscale-model-damaged-zip-header",
         _down("--aux", "{dem}", "--model", "{model_header}"), 2,
         ("model_header.geosr", "damaged", "not a valid model bundle"), out=OUT_TIF),
    Case("downscale-model-edited-halo", _down("--aux", "{dem}", "--model", "{model_halo}"), 2,
         ("model_halo.geosr", "content hash", "damaged"), out=OUT_TIF),
    Case("downscale-model-other-version", _down("--aux", "{dem}", "--model", "{model_v9}"), 2,
         ("model_v9.geosr", "version 9", "expected version 1"), out=OUT_TIF),
    Case("downscale-model-other-aux-names",
         _down("--aux", "{dem}", "--model", "{model_other_aux}"), 2,
         ("--aux", "slope, ndvi", "got 1: dem"), out=OUT_TIF),
    Case("downscale-aux-count-extra", _down("--aux", "{dem}", "{ndvi}", "--model", "{model}"), 2,
         ("--aux", "expects 1 aux layer(s): dem", "extra: ndvi"), out=OUT_TIF),
    Case("downscale-aux-count-none", _down("--model", "{model}"), 2,
         ("--aux", "expects 1 aux layer(s): dem", "got 0"), out=OUT_TIF),
    Case("downscale-model-other-factor",
         _down("--aux", "{dem}", "--model", "{model}", "--factor", "4"), 2,
         ("--factor 4", "factor 8"), out=OUT_TIF),
    Case("downscale-net-without-model", _down("--aux", "{dem}", "--method", "net"), 2,
         ("--method net", "--model"), out=OUT_TIF),
    Case("downscale-sharpen-without-aux", _down(), 2, ("--aux", "--method bicubic"),
         out=OUT_TIF),
    Case("downscale-tile-smaller-than-overlap",
         _down("--aux", "{dem}", "--tile", "8", "--overlap", "16"), 2,
         ("--tile 8", "--overlap 16"), out=OUT_TIF),
    Case("downscale-tile-zero", _down("--aux", "{dem}", "--tile", "0"), 2, ("--tile 0",),
         out=OUT_TIF),
    Case("downscale-overlap-negative", _down("--aux", "{dem}", "--overlap", "-8"), 2,
         ("--overlap -8",), out=OUT_TIF),
    Case("downscale-factor-not-integer", _down("--aux", "{dem}", "--factor", "2.5"), 2,
         ("--factor", "2.5"), out=OUT_TIF),
    Case("downscale-factor-too-big", _down("--aux", "{dem}", "--factor", "65"), 2,
         ("--factor", "65"), out=OUT_TIF),
    Case("downscale-factor-one", _down("--aux", "{dem}", "--factor", "1"), 2,
         ("--factor", "1"), out=OUT_TIF),
    Case("downscale-res-zero", _down("--aux", "{dem}", "--res", "0"), 2, ("--res", "0"),
         out=OUT_TIF),
    Case("downscale-res-negative", _down("--aux", "{dem}", "--res", "-500"), 2,
         ("--res", "-500"), out=OUT_TIF),
    Case("downscale-res-absurd", _down("--aux", "{dem}", "--res", "1e12"), 2, ("--res",),
         out=OUT_TIF),
    Case("downscale-res-nan", _down("--aux", "{dem}", "--res", "nan"), 2, ("--res", "nan"),
         out=OUT_TIF),
    Case("downscale-unknown-device", _down("--aux", "{dem}", "--model", "{model}",
                                           "--device", "tpu"), 2, ("--device", "tpu"),
         out=OUT_TIF),
    Case("downscale-cuda-absent", _down("--aux", "{dem}", "--model", "{model}",
                                        "--device", "cuda"), 2, ("--device cuda", "no CUDA"),
         out=OUT_TIF, needs="no-cuda"),
    Case("downscale-workers-zero", _down("--aux", "{dem}", "--workers", "0"), 2,
         ("--workers 0",), out=OUT_TIF),
    Case("downscale-output-exists", _down("--aux", "{dem}", out="{existing}"), 2,
         ("existing", "--overwrite"), out=""),
    Case("downscale-output-is-a-folder", _down("--aux", "{dem}", "--overwrite", out="{nonempty}"),
         2, ("nonempty", "folder"), out=""),
    Case("downscale-output-folder-missing", _down("--aux", "{dem}", out="{nodir}/o.tif"), 2,
         ("does not exist",), out="{nodir}/o.tif"),
    Case("downscale-output-readonly", _down("--aux", "{dem}", out="{readonly}/o.tif"), 2,
         ("not writable",), out="{readonly}/o.tif", needs="non-root"),
    Case("downscale-out-and-out-dir", _down("--aux", "{dem}", "--out-dir", "{nonempty}"), 2,
         ("-o", "--out-dir"), out=OUT_TIF),
    Case("downscale-disk-full-while-staging", _down("--aux", "{dem}"), 1,
         ("result.tif", "No space left on device"), out=OUT_TIF, fault="disk-full-stage"),
    Case("downscale-disk-full-while-writing-cog", _down("--aux", "{dem}"), 1,
         ("result.tif", "No space left on device"), out=OUT_TIF, fault="disk-full-cog"),
]

REPORT = "{out}.json"


def _val(*args: str, pred: str = "{target}", truth: str = "{target}") -> list[str]:
    """``geosr validate`` writing a JSON report that must not appear on failure."""
    return ["validate", pred, truth, "--json", REPORT, *args]


VALIDATE = [
    Case("validate-pred-missing", _val(pred="{missing}"), 2, ("missing.tif", "not found"),
         out=REPORT),
    Case("validate-truth-not-a-raster", _val(truth="{text}"), 2, ("notes.tif", "not a readable"),
         out=REPORT),
    Case("validate-no-overlap", _val(pred="{dem}", truth="{far}"), 2,
         ("far.tif", "overlap 0%"), out=REPORT),
    Case("validate-band-count-mismatch", _val(truth="{dem}"), 2,
         ("dem.tif", "1 band(s)", "3"), out=REPORT),
    Case("validate-all-nodata", _val(pred="{dem}", truth="{allnan}"), 2,
         ("allnan.tif", "no pixel has a value in both"), out=REPORT),
    Case("validate-fail-above-no-value", _val("--fail-above", "rmse"), 2,
         ("--fail-above", "'rmse'", "METRIC=VALUE"), out=REPORT),
    Case("validate-fail-above-unknown-metric", _val("--fail-above", "rsme=1"), 2,
         ("--fail-above", "rsme", "expected one of"), out=REPORT),
    Case("validate-fail-above-not-a-number", _val("--fail-above", "rmse=abc"), 2,
         ("--fail-above", "abc"), out=REPORT),
    Case("validate-fail-below-nan", _val("--fail-below", "pearson_r=nan"), 2,
         ("--fail-below", "pearson_r"), out=REPORT),
    Case("validate-blocks-negative", _val("--blocks", "-2"), 2, ("--blocks", "-2"), out=REPORT),
    Case("validate-unknown-baseline", _val("--coarse", "{coarse2}", "--baselines", "magic"), 2,
         ("--baselines", "magic"), out=REPORT),
    Case("validate-json-folder-missing", ["validate", "{target}", "{target}", "--json",
                                          "{nodir}/r.json"], 2, ("does not exist",),
         out="{nodir}/r.json"),
    Case("validate-plots-folder-missing", _val("--plots", "{nodir}/figs"), 2,
         ("--plots", "does not exist"), out=REPORT),
]

CASES: list[Case] = [*PREPARE, *TRAIN, *DOWNSCALE, *VALIDATE]


def _disk_full_stage(monkeypatch) -> None:
    """The staging GeoTIFF's writes fail half-way, as on a full disk."""
    real = ds._BlockRowWriter._put
    calls = {"n": 0}

    def put(self, top, arr):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, top, arr)

    monkeypatch.setattr(ds._BlockRowWriter, "_put", put)


def _disk_full_cog(monkeypatch) -> None:
    """GDAL's COG copy writes part of the file, then the disk is full."""

    def copy(src, dst, **kw):
        Path(dst).write_bytes(b"II*\x00" + b"\x00" * 4096)
        raise RasterioIOError(f"{dst}: Write error: No space left on device")

    monkeypatch.setattr(rasterio.shutil, "copy", copy)


FAULTS = {"disk-full-stage": _disk_full_stage, "disk-full-cog": _disk_full_cog}


def _fill(text: str, files: dict[str, str], out: Path) -> str:
    return text.format(out=str(out), **files)


def _watched(argv: list[str], tmp_path: Path) -> set[Path]:
    """Folders a command was pointed at: the test's own folder, parents of path arguments
    and path arguments that are folders."""
    folders = {tmp_path}
    for a in argv:
        if "/" not in a:
            continue
        p = Path(a)
        if p.is_dir():
            folders.add(p)
        if p.parent.is_dir():
            folders.add(p.parent)
    return folders


def _snapshot(folders: set[Path]) -> dict[Path, dict[str, tuple[int, int]]]:
    return {d: {p.name: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in d.iterdir()}
            for d in folders}


def run_case(case: Case, files: dict[str, str], tmp_path: Path, *extra: str):
    out = tmp_path / "result"
    argv = [*extra, *(_fill(a, files, out) for a in case.argv)]
    before = _snapshot(_watched(argv, tmp_path))
    result = runner.invoke(app, argv)
    after = _snapshot(set(before))
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    return result, lines, out, before, after


def _skip_unmet(case: Case) -> None:
    if case.needs == "non-root" and ROOT:
        pytest.skip("root ignores folder permissions")
    if case.needs == "no-cuda" and CUDA:
        pytest.skip("a CUDA GPU is present")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, files, tmp_path, monkeypatch):
    _skip_unmet(case)
    if case.fault:
        FAULTS[case.fault](monkeypatch)
    result, lines, out, before, after = run_case(case, files, tmp_path)
    assert result.exit_code == case.code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert len(lines) == 1, lines
    verb = case.argv[0]
    assert lines[0].startswith(f"geosr {verb}: error: "), lines[0]
    for needle in case.needles:
        assert needle in lines[0], (needle, lines[0])
    if case.out:
        assert not Path(_fill(case.out, files, out)).exists()
    for folder in before:
        assert after[folder] == before[folder], (folder, before[folder], after[folder])


def test_every_verb_has_cases():
    verbs = {c.argv[0] for c in CASES}
    assert verbs == {"prepare", "train", "downscale", "validate"}
    assert len(CASES) > 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id", ["downscale-model-corrupt", "train-damaged-manifest"])
def test_debug_shows_the_traceback(case_id, files, tmp_path):
    case = next(c for c in CASES if c.id == case_id)
    result, lines, out, before, after = run_case(case, files, tmp_path, "--debug")
    assert result.exit_code == case.code
    assert "Traceback (most recent call last)" in result.stderr
    # the one-line error still ends the output
    assert lines[-1].startswith(f"geosr {case.argv[0]}: error: ")
    assert after == before


# --------------------------------------------------------------------------- usable, with a warning

@dataclass(frozen=True)
class Accepted:
    """Imperfect input that is used: exit 0, at most one warning line, nodata where due."""

    id: str
    argv: list[str]
    warning: tuple[str, ...]  # needles of the one warning line; () = no line at all
    nodata_px: tuple[int, int] | None = None  # (row, col) of the output that must be NaN


ACCEPTED = [
    # outside the aux, sharpening falls back to interpolation (README): values, not nodata
    Accepted("downscale-aux-partial", _down("--aux", "{dem_half}"),
             ("warning", "--aux", "dem_half.tif", "covers 50%", "only where both", "--bounds")),
    Accepted("downscale-inf-inside-valid-data", _down("--aux", "{dem}", src="{coarse_inf}"),
             ("warning", "coarse_inf.tif", "infinite"), (3, 3)),
    Accepted("downscale-integer-input-with-nodata", _down("--aux", "{dem}", src="{coarse_int}"),
             (), (3, 3)),
    Accepted("prepare-aux-partial", ["prepare", "--target", "{target}", "--aux", "{dem_half}",
                                     "--factor", "8", "-o", "{out}"],
             ("warning", "--aux dem_half", "covers 50%")),
]


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.id for c in ACCEPTED])
def test_accepted_with_a_warning(case: Accepted, files, tmp_path):
    out = tmp_path / "result"
    argv = [_fill(a, files, out) for a in case.argv]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == (1 if case.warning else 0), lines
    for needle in case.warning:
        assert needle in lines[0], (needle, lines[0])
    if case.nodata_px is not None:
        with rasterio.open(f"{out}.tif") as src:
            arr = src.read(1)
        r, c = case.nodata_px
        assert np.isnan(arr[r, c]) and np.isfinite(arr).sum() > arr.size // 4
    assert not [p for p in tmp_path.rglob("*") if TMP_TAG in p.name]
