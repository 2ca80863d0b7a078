"""Accuracy on real data: the network beside bicubic and regression sharpening.

Every experiment prepares its data with :func:`geosr.prepare` (into ``--work``),
trains networks with :func:`geosr.train` (the engine of ``geosr train``; options as
the CLI's) and scores every method on the same held-out pixels: RMSE, MAE, Pearson r,
SSIM and the conservation error (RMSE of the output's coarse-cell means against the
coarse input); for precipitation also the wet-day frequency bias (wet: >= 1 mm), the
bias of the 99th percentile and the fraction of pixels below zero.

Experiments (``../shared/data/real``; ``--experiments`` picks some):

- ``ch16`` / ``ch32``: MeteoSwiss 1 km temperature, factor 16 / 32 (16 / 32 km -> 1 km),
  aux: DEM (swissAltitude) and land type (categorical). Train on TmaxM 2023-05 and
  TminY 2022 (best epoch chosen on their eastern 25%); test on TabsM 2023-05, a field
  never seen in training, over the whole country.
- ``ch16-east``: MeteoSwiss TabsM + TmaxM 2023-05, factor 16, DEM aux; the eastern 25%
  of the country is held out (training never sees a target cell there).
- ``uk-tasmax`` / ``uk-tasmin`` / ``uk-rainfall``: HadUK-Grid daily fields, West
  Cornwall, May 2018, factor 8 (8 km -> 1 km), aux: DEM (dtmm) and the sea mask
  (categorical). Train days 1-16, choose the best epoch on days 17-21, test days
  22-31: the training reads a copy of days 1-21 only.
- ``era5-tasmax``: the real ERA5 0.25 deg daily maximum 2 m temperature (from hourly
  fields) as the coarse input, HadUK-Grid tasmax as the truth, factor 20 (20 km -> 1 km,
  British National Grid); train days 1-16, best epoch on 17-21, test days 22-31. Here
  the coarse input is a different product from the truth (bias, timing of the day):
  conservation ties the output to ERA5's cell means, so it is not expected to help.

Methods: ``bicubic``; ``sharpen`` (regression sharpening on the DEM fitted per scene and
day, the default of ``geosr downscale`` without a model, with conservation); for
precipitation also ``bicubic 0:`` and ``sharpen 0:`` (clipped at zero with each cell's
mean restored, what ``downscale`` does to rain by default); ``net``
(scene-adaptive, conservation on, all aux), ``net-fixed`` (``--no-scene``: one fixed
standardisation), ``net-additive`` (rain: the additive residual and conservation instead
of the non-negative softmax network, trained with ``l1`` and no augmentation) and, where
listed, ``net-noconserve`` (trained with ``--no-conserve``), ``net-gan`` (``--gan``) and
aux subsets (``net-aux:<names>``).

    python benchmarks/accuracy.py [--experiments ch16 uk-tasmax ...] [--minutes 3]
        [--epochs 80] [--work DIR] [--threads 2] [--json FILE]

Prints one table per experiment; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import CH, UK, era5_daily, meteoswiss  # noqa: E402

from geosr.baselines import sharpen, upsample  # noqa: E402
from geosr.constraints import bounded_conserve
from geosr.dataset.manifest import read_manifest
from geosr.dataset.prepare import PrepareConfig, prepare
from geosr.evaluate import metrics  # noqa: E402
from geosr.io.read import read_window
from geosr.model.bundle import load_bundle
from geosr.model.predictor import Predictor
from geosr.sources import LayerSpec
from geosr.training.config import Loss, TrainConfig
from geosr.training.loop import train

CH_AUX = (LayerSpec("dem", str(CH / "aux" / "swissAltitude_geostatsp.tif")),
          LayerSpec("landtype", str(CH / "aux" / "swissLandType_geostatsp.tif"), True))
UK_AUX = (LayerSpec("dem", str(UK / "aux" / "dtmm.tif")),
          LayerSpec("sea", str(UK / "aux" / "uk_seamask_1km.tif"), True))
UK_TRAIN_DAYS = 21  # training period: days 1-21, of which 17-21 choose the best epoch
UK_VAL_DAYS = tuple(range(17, 22))
UK_TEST_DAYS = tuple(range(22, 32))
SCORES = ("rmse", "mae", "pearson_r", "ssim", "conservation_rmse")


@dataclass
class Experiment:
    key: str
    label: str
    units: str
    train_ds: Path
    test_ds: Path
    test_bands: tuple[int, ...]
    split: dict
    variants: dict[str, dict] = field(default_factory=dict)
    cols: slice = field(default_factory=lambda: slice(None))


def _prep(out: Path, **kw) -> Path:
    if not (out / "manifest.json").exists():
        prepare(PrepareConfig(out_dir=out, overwrite=True, **kw))
    return out


def _days(ds: Path, days: tuple[int, ...]) -> tuple[str, ...]:
    samples = read_manifest(ds).samples
    return tuple(samples[d - 1].id for d in days)


def build(key: str, work: Path) -> Experiment:
    """Prepare the data of one experiment and describe its variants."""
    if key in ("ch16", "ch32"):
        f = int(key[2:])
        train_ds = _prep(work / f"{key}-train", target=(str(meteoswiss("TmaxM")),
                         str(meteoswiss("TminY"))), aux=CH_AUX, res_m=1000.0, factor=f)
        test_ds = _prep(work / f"{key}-test", target=(str(meteoswiss("TabsM")),), aux=CH_AUX,
                        res_m=1000.0, factor=f)
        variants = {"net": {}, "net-fixed": {"scene": False}}
        if f == 16:
            variants |= {"net-noconserve": {"conserve": False}, "net-gan": {"gan": True},
                         "net-aux:dem": {"aux": ("dem",)}, "net-aux:none": {"aux": ()}}
        return Experiment(key, f"MeteoSwiss TabsM 2023-05, {f} km -> 1 km "
                          "(trained on TmaxM, TminY)", "degC", train_ds, test_ds, (1,),
                          {"val_block": 0.25, "patch": 6 if f == 16 else 4}, variants)
    if key == "ch16-east":
        ds = _prep(work / "ch16-east", target=(str(meteoswiss("TabsM")),
                   str(meteoswiss("TmaxM"))), aux=CH_AUX[:1], res_m=1000.0, factor=16)
        m = read_manifest(ds)
        exp = Experiment(key, "MeteoSwiss TabsM+TmaxM, 16 km -> 1 km, eastern 25% held out",
                         "degC", ds, ds, (1, 2), {"val_block": 0.25, "patch": 6}, {"net": {}})
        from geosr.training.data import make_split

        count = np.isfinite(read_window(m.path_of(m.coarse), _full(m.coarse_grid))).sum(0)
        split = make_split(m, val_block=0.25, coarse_valid=count > 0)
        c0, c1 = split.val_cols
        exp.cols = slice(c0 * m.factor, c1 * m.factor)
        return exp
    if key.startswith("uk-"):
        var = key[3:]
        target = UK / "target" / f"{var}1km.tif"
        ds = _prep(work / key, target=(str(target),), aux=UK_AUX, res_m=1000.0, factor=8)
        train_ds = _prep(work / f"{key}-train", target=(str(_first_days(target, work)),),
                         aux=UK_AUX, res_m=1000.0, factor=8)
        variants = {"net": {}, "net-fixed": {"scene": False},
                    "net-noconserve": {"conserve": False}}
        if var == "rainfall":  # the default is the non-negative network; the additive one
            variants = {"net": {}, "net-additive": {"arch": (("positive", False),),
                                                    "loss": Loss.l1, "augment": False}}
        if var == "tasmax":
            variants |= {"net-gan": {"gan": True}, "net-aux:dem": {"aux": ("dem",)},
                         "net-aux:none": {"aux": ()}}
        units = "mm" if var == "rainfall" else "degC"
        return Experiment(key, f"HadUK-Grid {var}, Cornwall, 8 km -> 1 km, days 22-31", units,
                          train_ds, ds, UK_TEST_DAYS,
                          {"val_samples": _days(train_ds, UK_VAL_DAYS), "patch": 5}, variants)
    if key == "era5-tasmax":
        era5 = era5_daily(work)
        target = UK / "target" / "tasmax1km.tif"
        grid = dict(aux=UK_AUX, res_m=1000.0, factor=20, crs="EPSG:27700",
                    bounds=(134000.0, 12000.0, 204000.0, 83000.0))
        ds = _prep(work / key, coarse=(str(era5),), target=(str(target),), **grid)
        train_ds = _prep(work / f"{key}-train", coarse=(str(_first_days(era5, work)),),
                         target=(str(_first_days(target, work)),), **grid)
        return Experiment(key, "ERA5 daily Tmax (0.25 deg) -> HadUK tasmax 1 km, f=20, "
                          "days 22-31", "degC", train_ds, ds, UK_TEST_DAYS,
                          {"val_samples": _days(train_ds, UK_VAL_DAYS), "patch": 2},
                          {"net": {}, "net-noconserve": {"conserve": False}})
    raise SystemExit(f"unknown experiment {key!r}")


def _first_days(path: Path, work: Path, n: int = UK_TRAIN_DAYS) -> Path:
    """The first ``n`` bands (days) of a daily raster, with their tags, units and
    descriptions: the training period, so that no test day is ever read in training."""
    out = work / f"{Path(path).stem}_days1-{n}.tif"
    if not out.exists():
        with rasterio.open(path) as src:
            profile = src.profile | {"count": n}
            with rasterio.open(out, "w", **profile) as dst:
                dst.write(src.read(list(range(1, n + 1))))
                for b in range(1, n + 1):
                    dst.update_tags(b, **src.tags(b))
                    if src.units[b - 1]:
                        dst.set_band_unit(b, src.units[b - 1])
                    if src.descriptions[b - 1]:
                        dst.set_band_description(b, src.descriptions[b - 1])
    return out


def _full(grid) -> Window:
    return Window(0, 0, grid.width, grid.height)


def fit(exp: Experiment, name: str, opts: dict, args) -> tuple[Path, dict]:
    """Train one variant; returns (bundle, training facts)."""
    model = args.work / f"{exp.key}.{name.replace(':', '_')}.geosr"
    split = {k: v for k, v in exp.split.items() if k != "patch"}
    t0 = time.perf_counter()
    res = train(TrainConfig(dataset=exp.train_ds, out=model, epochs=args.epochs,
                            max_minutes=args.minutes, patch=exp.split["patch"], seed=args.seed,
                            device="cpu", threads=args.threads, overwrite=True, **split, **opts))
    return model, {"train_seconds": round(time.perf_counter() - t0, 1),
                   "epochs_done": len(res.history), "best_epoch": res.best_epoch}


def evaluate(exp: Experiment, models: dict[str, Path]) -> dict[str, dict]:
    """Scores of every method on the experiment's held-out pixels (common valid mask)."""
    m = read_manifest(exp.test_ds)
    f = m.factor
    bands = [b - 1 for b in exp.test_bands]
    coarse = read_window(m.path_of(m.coarse), _full(m.coarse_grid))[bands]
    truth = read_window(m.path_of(m.target), _full(m.fine_grid))[bands]
    aux = {layer.name: read_window(m.path_of(layer), _full(m.fine_grid))[0] for layer in m.aux}
    preds = {"bicubic": upsample(coarse, f, "bicubic"),
             "sharpen": np.stack([sharpen(c, aux["dem"][None], f) for c in coarse])}
    if exp.units == "mm":  # what `downscale` gives rain by default: valid range 0:
        for name in ("bicubic", "sharpen"):
            preds[f"{name} 0:"] = bounded_conserve(preds[name].astype(np.float32),
                                                   coarse, f, lo=0.0)
    # as `downscale --cell-mean auto` (and `train`) decide: coarse data with nodata cells
    # are means over where the aux has data, whose pixels are conserved apart
    land = bool(np.isnan(coarse).any())
    for name, path in models.items():
        predictor = Predictor(load_bundle(path), device="cpu")
        stack = np.stack([aux[a] for a in predictor.aux_names]) if predictor.aux_names else None
        preds[name] = np.stack([
            predictor.predict(c[None], None if stack is None else stack[None],
                              mean_over_aux=land)[0] for c in coarse])
    ok = np.isfinite(truth)
    for p in preds.values():
        ok &= np.isfinite(p)
    cols = np.zeros_like(ok)
    cols[..., exp.cols] = True
    ok &= cols
    t = np.where(ok, truth, np.nan)
    out = {}
    for name, p in preds.items():
        pm = np.where(ok, p, np.nan)
        out[name] = {"rmse": metrics.rmse(pm, t), "mae": metrics.mae(pm, t),
                     "pearson_r": metrics.pearson_r(pm, t), "ssim": metrics.ssim(pm, t),
                     "conservation_rmse": metrics.conservation_rmse(p, coarse, f),
                     "pixels": int(ok.sum())}
        if exp.units == "mm":  # precipitation: wet days, heavy rain, never below zero
            out[name] |= {"wet_day_freq_bias": metrics.wet_day_freq_bias(pm, t),
                          "p99_bias": metrics.p99_bias(pm, t),
                          "frac_negative": metrics.frac_outside_range(pm, 0.0)}
    return out


def table(exp: Experiment, scores: dict, facts: dict) -> str:
    lines = [f"## {exp.label} ({exp.units}; {next(iter(scores.values()))['pixels']} px)",
             f"{'method':<18}{'RMSE':>8}{'MAE':>8}{'r':>8}{'SSIM':>8}{'cons.':>9}"
             f"{'vs sharpen':>12}{'train s':>9}"]
    ref = scores["sharpen"]["rmse"]
    for name, s in scores.items():
        ratio = s["rmse"] / ref if ref else float("nan")
        tr = facts.get(name, {}).get("train_seconds", "")
        lines.append(f"{name:<18}{s['rmse']:8.3f}{s['mae']:8.3f}{s['pearson_r']:8.3f}"
                     f"{s['ssim']:8.3f}{s['conservation_rmse']:9.4f}{ratio:11.2f}x{tr!s:>9}")
    if "p99_bias" in scores["sharpen"]:
        lines.append(f"{'method':<18}{'wet-day freq. bias':>20}{'p99 bias':>10}{'< 0':>9}")
        lines += [f"{name:<18}{s['wet_day_freq_bias']:20.4f}{s['p99_bias']:10.3f}"
                  f"{s['frac_negative']:9.2%}" for name, s in scores.items()]
    return "\n".join(lines)


def main() -> None:
    keys = ["ch16", "ch32", "ch16-east", "uk-tasmax", "uk-tasmin", "uk-rainfall", "era5-tasmax"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", nargs="+", default=keys, choices=keys)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--minutes", type=float, default=3.0,
                    help="training time cap per model (minutes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only-net", action="store_true", help="train only the 'net' variant")
    ap.add_argument("--variants", nargs="+", default=None,
                    help="train only these variants (e.g. net net-fixed)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not CH.is_dir() or not UK.is_dir():
        sys.exit(f"real data not found under {CH.parent}")
    args.work = args.work or Path(tempfile.mkdtemp(prefix="geosr-accuracy-"))
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"# geosr accuracy, {date.today()}, {platform.machine()} {platform.processor() or ''}, "
          f"{args.threads} thread(s), <= {args.epochs} epochs / {args.minutes} min per model")
    report = []
    for key in args.experiments:
        exp = build(key, args.work)
        if exp.units == "degC":  # scene-adaptive with slope augmentation (train --slope-augment 2)
            exp.variants.setdefault("net-slope2", {"slope_augment": 2.0})
            # the scene network with the training data's aux statistics (--arch scene_aux=false)
            exp.variants.setdefault("net-trainaux", {"arch": (("scene_aux", False),)})
        variants = {"net": exp.variants["net"]} if args.only_net else exp.variants
        if args.variants:
            variants = {k: v for k, v in variants.items() if k in args.variants}
        models, facts = {}, {}
        for name, opts in variants.items():
            models[name], facts[name] = fit(exp, name, opts, args)
        scores = evaluate(exp, models)
        print(table(exp, scores, facts) + "\n", flush=True)
        report.append({"experiment": key, "label": exp.label, "units": exp.units,
                       "scores": scores, "training": facts})
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
