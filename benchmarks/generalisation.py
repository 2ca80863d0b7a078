"""Generalisation on real data: does the network keep up with regression sharpening
when the regime changes (another period, variable, region or scale)?

Protocol per case, through the public API (:mod:`geosr.api`) only:

1. Training: :func:`geosr.prepare` on a 1 km truth with the DEM as aux (named ``dem``)
   at the case's factor, then :func:`geosr.train` once per network of ``--nets`` with
   the same budget (default: the scene-adaptive network, the default, and the
   fixed-statistics one, ``scene=False``; also ``net-slope``/``net-slope5``, the
   scene-adaptive one with ``slope_augment`` 2 or 5); ``max_minutes`` (``--minutes``,
   default 3), one thread, seed 0 (``--seed``), otherwise defaults.
   Prepared data and bundles are cached under ``--work``; ``--retrain`` trains again.
   With two training fields, ``train``'s default split trains on the first and chooses
   the best epoch on the second (a held-out regime); with one, on a held-out block.
2. Test input shaped like a user's file: the test truth block-averaged into coarse cells
   on the coarse file's own grid, its origin offset from prepare's lattice (multiples of
   the coarse cell) by a non-multiple of the cell, written as a plain GeoTIFF without
   units tags; then :func:`geosr.downscale` with the DEM and the model.
3. Scoring: :func:`geosr.validate` against the truth with ``coarse=`` the test file and
   the DEM as aux, which runs bicubic and regression sharpening on the same pixels.

Cases (``../shared/data/real``):

- ``period-ch``: MeteoSwiss, trained on TabsM + TmaxM 2023-05 at 16 km -> 1 km; tested
  on TminY 2022 (yearly mean daily minimum, a colder regime).
- ``period-uk``: HadUK-Grid tasmax, Cornwall, 8 km -> 1 km; trained on days 1-21,
  tested on days 22-31 (the nearest to a perfect-model case in Cornwall).
- ``variable-uk``: the same model tested on tasmin, days 22-31.
- ``region``: trained on MeteoSwiss TabsM + TmaxM at 8 km -> 1 km; tested on HadUK
  tasmax days 22-31 (DEM dtmm): other relief, other climate.
- ``scale-ch``: the ``period-ch`` model (16 km -> 1 km) on TminY 2022 averaged to 32 km
  and downscaled to 2 km (the same factor at another scale; truth: the 1 km field
  averaged to 2 km).
- ``ref-ch``: perfect-model reference: trained on TmaxM 2023-05 at 16 km -> 1 km, tested
  on TabsM 2023-05 (same month, related variable).

Two-region cases (run when named in ``--cases``): one model trained on the ``region``
case's Swiss dataset and the ``period-uk`` case's Cornish one together (``geosr train
DS1 DS2``, the same budget), tested like each region's own model:

- ``general-ch`` beside ``period-ch8`` (TminY 2022 at 8 km -> 1 km, the Swiss-only
  model), ``general-uk`` beside ``period-uk``, ``general-var`` beside ``variable-uk``.

    OMP_NUM_THREADS=1 python benchmarks/generalisation.py [--cases period-ch ...]
        [--nets net-fixed net-scene net-slope net-slope5] [--minutes 3] [--seed 0]
        [--work /tmp/geosr-gen] [--retrain] [--json FILE]

Prints one table per case and a summary; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from affine import Affine  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import CH, UK, meteoswiss  # noqa: E402

import geosr  # noqa: E402
from geosr.arrays import block_mean  # noqa: E402

CH_DEM = CH / "aux" / "swissAltitude_geostatsp.tif"
UK_DEM = UK / "aux" / "dtmm.tif"
UK_TRAIN = ("2018-05-01", "2018-05-21")
UK_TEST_BANDS = tuple(range(22, 32))
BASELINES = ("bicubic", "sharpen")
NETS = {"net-scene": {"scene": True}, "net-fixed": {"scene": False},
        "net-slope": {"scene": True, "slope_augment": 2.0},
        "net-slope5": {"scene": True, "slope_augment": 5.0},
        "net-scene-trainaux": {"scene": True, "arch": (("scene_aux", False),)},
        "net-scene-flips": {"scene": True, "augment": True}}
"""The networks a case can train (``--nets``): the scene-adaptive default, the
fixed-statistics one, the scene-adaptive one with slope augmentation (scales 2, 5) and
the scene-adaptive one with the training data's aux statistics (the default before
2026-12-03), and the scene-adaptive one trained with random flips/rotations of its
patches (``train --augment``)."""
DEFAULT_NETS = ("net-fixed", "net-scene")


@dataclass(frozen=True)
class Training:
    """One prepared training set (both networks are trained on it)."""

    key: str
    label: str
    target: tuple[Path, ...]
    dem: Path
    factor: int
    time: tuple[str, str] | None = None
    parts: tuple[str, ...] = ()  # trained on these training sets together (their datasets)


@dataclass(frozen=True)
class Case:
    """One test: a model, a truth field (bands), the coarse cell, grid offset and DEM."""

    key: str
    kind: str
    label: str
    training: str
    truth: Path
    bands: tuple[int, ...]
    dem: Path
    factor: int
    res_km: int = 1  # fine pixel of the test (the truth is averaged to it)
    offset_km: tuple[int, int] = (3, 5)  # of the coarse grid's west and north edges


def trainings() -> dict[str, Training]:
    tabs, tmax = meteoswiss("TabsM"), meteoswiss("TmaxM")
    return {t.key: t for t in (
        Training("ch16", "MeteoSwiss TabsM+TmaxM 2023-05 (default split: trains on TabsM, "
                 "best epoch on TmaxM), 16 km -> 1 km", (tabs, tmax), CH_DEM, 16),
        Training("ch8", "MeteoSwiss TabsM+TmaxM 2023-05 (default split: trains on TabsM, "
                 "best epoch on TmaxM), 8 km -> 1 km", (tabs, tmax), CH_DEM, 8),
        Training("ch16-tmax", "MeteoSwiss TmaxM 2023-05 (default split), 16 km -> 1 km",
                 (tmax,), CH_DEM, 16),
        Training("uk8", "HadUK tasmax days 1-21 (default split: trains on 1-17, best epoch "
                 "on 18-21), 8 km -> 1 km",
                 (UK / "target" / "tasmax1km.tif",), UK_DEM, 8, UK_TRAIN),
        Training("general8", "two regions together: ch8 (MeteoSwiss TabsM+TmaxM) and uk8 "
                 "(HadUK tasmax days 1-21), each split as alone, 8 km -> 1 km",
                 (), CH_DEM, 8, parts=("ch8", "uk8")),
    )}


def cases() -> dict[str, Case]:
    tmin_y, tabs = meteoswiss("TminY"), meteoswiss("TabsM")
    tasmax, tasmin = UK / "target" / "tasmax1km.tif", UK / "target" / "tasmin1km.tif"
    return {c.key: c for c in (
        Case("period-ch", "period", "MeteoSwiss TminY 2022, 16 km -> 1 km (trained on TabsM+"
             "TmaxM 2023-05)", "ch16", tmin_y, (1,), CH_DEM, 16),
        Case("period-uk", "period", "HadUK tasmax days 22-31, 8 km -> 1 km (trained on days "
             "1-21)", "uk8", tasmax, UK_TEST_BANDS, UK_DEM, 8),
        Case("variable-uk", "variable", "HadUK tasmin days 22-31, 8 km -> 1 km (trained on "
             "tasmax days 1-21)", "uk8", tasmin, UK_TEST_BANDS, UK_DEM, 8),
        Case("region", "region", "HadUK tasmax days 22-31, 8 km -> 1 km (trained on "
             "MeteoSwiss TabsM+TmaxM)", "ch8", tasmax, UK_TEST_BANDS, UK_DEM, 8),
        Case("scale-ch", "scale", "MeteoSwiss TminY 2022, 32 km -> 2 km (trained 16 km -> "
             "1 km on TabsM+TmaxM)", "ch16", tmin_y, (1,), CH_DEM, 16, res_km=2,
             offset_km=(6, 10)),
        Case("ref-ch", "perfect-model", "MeteoSwiss TabsM 2023-05, 16 km -> 1 km (trained on "
             "TmaxM 2023-05)", "ch16-tmax", tabs, (1,), CH_DEM, 16),
        # one model for two regions (train DS1 DS2): each region's cross case beside the
        # same case of its own region's model
        Case("period-ch8", "period", "MeteoSwiss TminY 2022, 8 km -> 1 km (trained on TabsM+"
             "TmaxM 2023-05)", "ch8", tmin_y, (1,), CH_DEM, 8),
        Case("general-ch", "period", "MeteoSwiss TminY 2022, 8 km -> 1 km (the two-region "
             "model)", "general8", tmin_y, (1,), CH_DEM, 8),
        Case("general-uk", "period", "HadUK tasmax days 22-31, 8 km -> 1 km (the two-region "
             "model)", "general8", tasmax, UK_TEST_BANDS, UK_DEM, 8),
        Case("general-var", "variable", "HadUK tasmin days 22-31, 8 km -> 1 km (the "
             "two-region model)", "general8", tasmin, UK_TEST_BANDS, UK_DEM, 8),
    )}


DEFAULT_CASES = ("period-ch", "period-uk", "variable-uk", "region", "scale-ch", "ref-ch")
"""The protocol's six cases; the two-region ones run when named in ``--cases``."""


# -- training ---------------------------------------------------------------------------

def prepared(t: Training, work: Path) -> Path | list[Path]:
    if t.parts:
        return [prepared(trainings()[k], work) for k in t.parts]
    out = work / "data" / t.key
    out.parent.mkdir(parents=True, exist_ok=True)
    if not (out / "manifest.json").exists():
        geosr.prepare(out=out, target=[str(p) for p in t.target], aux={"dem": str(t.dem)},
                      res=1000.0, factor=t.factor, time=t.time, overwrite=True)
    return out


def trained(t: Training, args) -> tuple[dict[str, Path], dict[str, dict]]:
    """Both networks of one training set: bundles and training facts (cached)."""
    data = prepared(t, args.work)
    models, facts = {}, {}
    for name in args.nets:
        bundle = args.work / "models" / f"{t.key}.{name}.geosr"
        info = bundle.with_suffix(".facts.json")
        if args.retrain or not bundle.exists() or not info.exists():
            bundle.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            res = geosr.train(data, out=bundle, **NETS[name], max_minutes=args.minutes,
                              threads=1, seed=args.seed, device="cpu", overwrite=True)
            info.write_text(json.dumps({
                "train_seconds": round(time.perf_counter() - t0, 1),
                "epochs_done": len(res.history), "best_epoch": res.best_epoch,
                "stopped": res.stopped}))
            print(f"  trained {bundle.name}: {info.read_text()}", flush=True)
        split = json.loads(bundle.with_suffix(".log.json").read_text()).get("split") or {}
        models[name] = bundle
        facts[name] = json.loads(info.read_text()) | {
            "train_samples": split.get("train_samples"), "val_samples": split.get("val_samples"),
            "split": split.get("kind")}
    return models, facts


# -- test inputs ------------------------------------------------------------------------

def read_field(path: Path, bands: tuple[int, ...], agg: int) -> tuple[np.ndarray, Affine, str]:
    """Bands of a 1 km raster (NaN = nodata), block-averaged ``agg`` x ``agg`` (the
    raster padded with NaN on the right and bottom to whole blocks)."""
    with rasterio.open(path) as src:
        arr = src.read(list(bands), masked=True).filled(np.nan).astype(np.float32)
        transform, crs = src.transform, src.crs.to_wkt()
    if agg > 1:
        arr = _pad(arr, 0, (-arr.shape[1]) % agg, 0, (-arr.shape[2]) % agg)
        arr = block_mean(arr, agg)
        transform = transform * Affine.scale(agg)
    return arr, transform, crs


def _pad(arr: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    return np.pad(arr, ((0, 0), (top, bottom), (left, right)), constant_values=np.nan)


def coarse_file(fine: np.ndarray, transform: Affine, crs: str, factor: int,
                offset_m: tuple[float, float], out: Path) -> Path:
    """Block means of ``fine`` on a coarse grid whose west/north cell edges lie at
    ``offset_m`` + multiples of the coarse cell (in CRS metres); a plain GeoTIFF."""
    res = transform.a
    cell = res * factor
    west, north = transform.c, transform.f
    off_c = round((offset_m[0] - west) / res) % factor   # first edge east of `west`, in px
    off_r = round((north - offset_m[1]) / res) % factor  # first edge south of `north`
    left, top = (factor - off_c) % factor, (factor - off_r) % factor
    arr = _pad(fine, top, 0, left, 0)
    arr = _pad(arr, 0, (-arr.shape[1]) % factor, 0, (-arr.shape[2]) % factor)
    coarse = block_mean(arr, factor)
    origin = Affine(cell, 0.0, west - left * res, 0.0, -cell, north + top * res)
    assert not (origin.c - offset_m[0]) % cell and not (origin.f - offset_m[1]) % cell
    assert offset_m[0] % cell and offset_m[1] % cell  # off prepare's lattice
    write_tif(out, coarse, origin, crs)
    return out


def write_tif(path: Path, arr: np.ndarray, transform: Affine, crs: str) -> Path:
    profile = {"driver": "GTiff", "width": arr.shape[2], "height": arr.shape[1],
               "count": arr.shape[0], "dtype": "float32", "crs": crs, "transform": transform,
               "nodata": float("nan")}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr.astype(np.float32))
    return path


# -- one case ---------------------------------------------------------------------------

def run_case(case: Case, models: dict[str, Path], work: Path) -> dict:
    """Downscale the case's test input with each network; scores of every method."""
    folder = work / "cases" / case.key
    folder.mkdir(parents=True, exist_ok=True)
    fine, transform, crs = read_field(case.truth, case.bands, case.res_km)
    truth = write_tif(folder / "truth.tif", fine, transform, crs)  # the test bands
    offset = tuple(1000.0 * k for k in case.offset_km)
    coarse = coarse_file(fine, transform, crs, case.factor, offset, folder / "coarse.tif")
    aux = {"dem": str(case.dem)}
    scores: dict[str, dict] = {}
    shift = {}
    for name, bundle in models.items():
        pred = folder / f"{name}.tif"
        t0 = time.perf_counter()
        geosr.downscale(str(coarse), aux=aux, model=str(bundle), out=pred,
                        res=1000.0 * case.res_km, device="cpu", workers=1, overwrite=True,
                        chunks=None)
        seconds = time.perf_counter() - t0
        rep = geosr.validate(str(pred), str(truth), coarse=str(coarse), aux=aux,
                             baselines=("bicubic", "sharpen"))
        scores.setdefault("bicubic", _pick(rep.baselines["bicubic"], rep.n_valid))
        scores.setdefault("sharpen", _pick(rep.baselines["sharpen"], rep.n_valid))
        scores[name] = _pick(rep.metrics, rep.n_valid) | {"downscale_s": round(seconds, 1)}
        shift[name] = rep.domain_shift
    best = min(scores["bicubic"]["rmse"], scores["sharpen"]["rmse"])
    for name in models:
        scores[name]["vs_best_baseline"] = scores[name]["rmse"] / best
    return {"scores": scores, "domain_shift": shift, "coarse_origin_km": case.offset_km}


def _pick(m: dict, n: int) -> dict:
    keys = ("rmse", "mae", "bias", "pearson_r", "ssim", "conservation_rmse")
    return {k: float(m[k]) for k in keys} | {"pixels": int(n)}


def table(case: Case, rec: dict) -> str:
    s = rec["scores"]
    px = s["bicubic"]["pixels"]
    best = min(s["bicubic"]["rmse"], s["sharpen"]["rmse"])
    lines = [f"## {case.key}: {case.label} (degC; {px} px)", f"model: {rec['trained_on']}",
             f"{'method':<11}{'RMSE':>8}{'MAE':>8}{'bias':>8}{'r':>8}{'SSIM':>8}{'cons.':>8}"
             f"{'/best bl.':>10}{'epochs':>8}"]
    for name in (*BASELINES, *rec["training"]):
        v = s[name]
        tr = rec["training"].get(name, {})
        ep = f"{tr['epochs_done']}" if tr else ""
        lines.append(f"{name:<11}{v['rmse']:8.3f}{v['mae']:8.3f}{v['bias']:8.3f}"
                     f"{v['pearson_r']:8.3f}{v['ssim']:8.3f}{v['conservation_rmse']:8.4f}"
                     f"{v['rmse'] / best:9.2f}x{ep:>8}")
    shifts = {k: v for k, v in rec["domain_shift"].items() if v and v != "none"}
    if shifts:
        lines.append("domain shift: " + "; ".join(f"{k}: {v}" for k, v in shifts.items()))
    return "\n".join(lines)


def summary(report: list[dict], nets: tuple[str, ...]) -> str:
    w = [max(11, len(n) + 2) for n in nets]
    lines = ["## summary (RMSE, degC; ratio = net RMSE / better of bicubic and sharpen)",
             f"{'case':<13}{'bicubic':>9}{'sharpen':>9}"
             + "".join(f"{n:>{k}}" for n, k in zip(nets, w, strict=True))
             + "".join(f"{n[4:] + '/best':>{k + 2}}" for n, k in zip(nets, w, strict=True))]
    for rec in report:
        s = rec["scores"]
        lines.append(f"{rec['case']:<13}{s['bicubic']['rmse']:9.3f}{s['sharpen']['rmse']:9.3f}"
                     + "".join(f"{s[n]['rmse']:{k}.3f}" for n, k in zip(nets, w, strict=True))
                     + "".join(f"{s[n]['vs_best_baseline']:{k + 1}.2f}x"
                               for n, k in zip(nets, w, strict=True)))
    return "\n".join(lines)


def main() -> None:
    keys = list(cases())
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), choices=keys)
    ap.add_argument("--minutes", type=float, default=3.0,
                    help="training time cap per network (minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/geosr-gen"))
    ap.add_argument("--retrain", action="store_true", help="train again even when cached")
    ap.add_argument("--nets", nargs="+", default=list(DEFAULT_NETS), choices=list(NETS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not CH.is_dir() or not UK.is_dir():
        sys.exit(f"real data not found under {CH.parent}")
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"# geosr generalisation, {date.today()}, {platform.machine()}, CPU, 1 thread, "
          f"<= {args.minutes} min per network, seed {args.seed}", flush=True)
    trains, report = trainings(), []
    done: dict[str, tuple[dict, dict]] = {}
    for key in args.cases:
        case = cases()[key]
        if case.training not in done:
            done[case.training] = trained(trains[case.training], args)
        models, facts = done[case.training]
        rec = run_case(case, models, args.work)
        rec = {"case": key, "kind": case.kind, "label": case.label,
               "training": facts, "trained_on": trains[case.training].label, **rec}
        print(table(case, rec) + "\n", flush=True)
        report.append(rec)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
    print(summary(report, tuple(args.nets)), flush=True)


if __name__ == "__main__":
    main()
