"""Aux-layer ablation: train one model per combination of aux layers, score each on the
validation samples, print one table.

This is the constraint-variable ablation of the method geosr implements: which fine
layers (elevation, slope, NDVI, ...) help the network, alone and together. For every
subset of the named aux layers (the empty set too, when ``geosr train`` supports a
model without aux), it

1. trains a model on the prepared dataset with that aux set (:func:`geosr.train`,
   or ``geosr train`` in a fresh process when the core is not importable), with the
   validation samples held out;
2. downscales the held-out samples' coarse fields with it (:func:`geosr.downscale`);
3. scores them against their fine targets (:func:`geosr.validate`), with the
   bicubic and regression-sharpening baselines on the same pixels as a yardstick.

Usage::

    # on a prepared training dataset (geosr prepare --target ... --aux ...):
    python benchmarks/ablation.py DATASET --aux dem slope [--val-samples ID ...] \\
        [--epochs 3] [--max-minutes 1] [--out ablation-out] [--json ablation.json]

    # no dataset: a generated terrain-driven scene (geosr.sample_data) with three aux
    # layers derived from its DEM (dem, slope, northness), 16 days, 4 held out:
    python benchmarks/ablation.py --demo

The default run is deliberately small (3 epochs, a 1-minute cap per model): ``--demo``
trains 8 models in about 5 minutes on a 2-core CPU (2 epochs took 30-45 s per model). Raise
``--epochs`` and ``--max-minutes`` for a real experiment. With ``n`` aux layers, ``2**n`` models are
trained; ``--max-combos`` caps that.

Validation samples default to the last quarter of the dataset's samples (at least one),
in manifest order (by date for dated inputs): an independent period, as in the paper's
protocol. They are passed to ``geosr train --val-samples`` so no model sees them.

Output: one row per aux set (and per baseline): RMSE, MAE, bias, Pearson r, SSIM, KGE,
gradient ratio, spectrum error, skill vs bicubic, training seconds. ``--json`` writes the
same rows with every metric.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

COLUMNS = ("rmse", "mae", "bias", "pearson_r", "ssim", "kge", "gradient_ratio",
           "spectrum_error")


# --- data ---------------------------------------------------------------------------------

def make_demo_dataset(folder: Path, *, size_px: int = 256,
                      factor: int = 16) -> tuple[Path, list[str]]:
    """Generated scene + derived aux (dem, slope, northness) -> a prepared dataset."""
    from geosr.sample_data import write_sample_scene

    scene = write_sample_scene(folder / "scene", size_px=size_px, res_m=500.0, factor=factor,
                               n_train=12, n_test=4)
    with rasterio.open(scene.dem) as src:
        dem = src.read(1).astype(np.float64)
        profile = src.profile
    gy, gx = np.gradient(dem, 500.0)
    layers = {
        "slope": np.degrees(np.arctan(np.hypot(gx, gy))),          # degrees
        "northness": np.cos(np.arctan2(-gx, gy)),                  # cos(aspect), -1..1
    }
    paths = {"dem": scene.dem}
    for name, arr in layers.items():
        paths[name] = folder / "scene" / f"{name}.tif"
        with rasterio.open(paths[name], "w", **profile) as dst:
            dst.write(arr.astype(np.float32), 1)
    ds = folder / "dataset"
    _geosr(["prepare", "--target", str(scene.train_target), str(scene.test_truth),
            "--aux", *[f"{k}={v}" for k, v in paths.items()], "--factor", str(factor),
            "--res", "500", "-o", str(ds), "--overwrite"])
    return ds, list(paths)


def extract_bands(src_path: Path, bands: list[int], dst_path: Path) -> Path:
    """Copy the given 1-based bands of a raster into a new GeoTIFF (keeps georeferencing)."""
    with rasterio.open(src_path) as src:
        profile = src.profile
        profile.update(count=len(bands), driver="GTiff")
        data = src.read(bands)
        tags = [src.tags(b) for b in bands]
        desc = [src.descriptions[b - 1] for b in bands]
        units = [src.units[b - 1] for b in bands]
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
        for i, (t, d, u) in enumerate(zip(tags, desc, units, strict=True), start=1):
            dst.update_tags(i, **t)
            if d:
                dst.set_band_description(i, d)
            if u:
                dst.set_band_unit(i, u)
    return dst_path


# --- training -----------------------------------------------------------------------------

def _geosr(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "geosr", *args]
    print("$ geosr " + " ".join(shlex.quote(a) for a in args), flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"geosr {args[0]} failed (exit {res.returncode}): "
                           f"{res.stderr.strip().splitlines()[-1:] or ''}")
    return res


def train_options() -> str:
    """``geosr train --help`` text, to pass only the options this version has."""
    return _geosr(["train", "--help"], check=False).stdout


def _core_train():
    """``(TrainConfig, train)`` from :mod:`geosr.training`, or None when it is not installed."""
    try:
        from geosr.training.config import TrainConfig
        from geosr.training.loop import train
    except ImportError:
        return None
    return TrainConfig, train


def train_model(dataset: Path, aux: tuple[str, ...], model: Path, *, val_samples: list[str],
                epochs: int, max_minutes: float, seed: int, device: str) -> float:
    """Train one model; returns the seconds it took.

    Uses the core :func:`geosr.train` (``aux=()`` is the model without aux);
    without it, ``geosr train`` in a fresh process with the options its ``--help`` lists.
    """
    t0 = time.perf_counter()
    core = _core_train()
    if core is not None:
        TrainConfig, train = core
        print(f"$ train(aux={list(aux)}, epochs={epochs}, max_minutes={max_minutes:g}, "
              f"val_samples={val_samples}, seed={seed})", flush=True)
        train(TrainConfig(dataset=Path(dataset), out=model, aux=tuple(aux), epochs=epochs,
                          max_minutes=max_minutes, val_samples=tuple(val_samples), seed=seed,
                          device=device, overwrite=True))
        return time.perf_counter() - t0
    help_text = train_options()
    args = ["train", str(dataset), "-o", str(model), "--overwrite"]
    if aux:
        args += ["--aux", *aux]
    elif "--no-aux" in help_text:
        args += ["--no-aux"]
    else:
        raise NotImplementedError("this geosr train has no --no-aux option")
    for opt, value in (("--epochs", epochs), ("--max-minutes", max_minutes), ("--seed", seed),
                       ("--device", device)):
        if opt in help_text:
            args += [opt, str(value)]
    if "--val-samples" in help_text:
        args += ["--val-samples", *val_samples]
    else:
        print("  note: geosr train has no --val-samples; its own split is used", flush=True)
    _geosr(args)
    return time.perf_counter() - t0


# --- evaluation ---------------------------------------------------------------------------

def evaluate(model: Path, *, coarse: Path, truth: Path, aux_specs, work: Path, device: str):
    """Downscale ``coarse`` with ``model``; validate against ``truth`` beside bicubic."""
    from geosr.evaluate.validate import Baseline, ValidateConfig, validate
    from geosr.inference.config import DownscaleConfig
    from geosr.inference.run import downscale

    pred = work / "pred.tif"
    downscale(DownscaleConfig(coarse=(str(coarse),), aux=tuple(aux_specs), out=pred,
                              model=str(model), overwrite=True, device=device))
    return validate(ValidateConfig(
        pred=str(pred), truth=str(truth), coarse=str(coarse), aux=tuple(aux_specs),
        baselines=(Baseline.bicubic,)))


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.4g}"


def print_table(rows: list[dict]) -> None:
    head = ["aux set", *COLUMNS, "skill_bicubic", "train_s"]
    table = [head] + [[r["name"], *(_fmt(r["metrics"].get(k)) for k in COLUMNS),
                       _fmt(r.get("skill_bicubic")), _fmt(r.get("train_s"))] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", nargs="?", type=Path, help="prepared training dataset folder")
    ap.add_argument("--aux", nargs="+", default=None, help="aux layer names to combine "
                    "(default: all in the dataset)")
    ap.add_argument("--demo", action="store_true", help="generate a small dataset and use it")
    ap.add_argument("--val-samples", nargs="+", default=None, help="held-out sample ids")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-minutes", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-empty", action="store_true", help="skip the model without aux")
    ap.add_argument("--max-combos", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None, help="keep models and predictions here")
    ap.add_argument("--json", type=Path, default=None, help="write all rows as JSON")
    args = ap.parse_args(argv)

    from geosr.dataset.manifest import read_manifest
    from geosr.sources import LayerSpec

    work = args.out or Path(tempfile.mkdtemp(prefix="geosr-ablation-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.dataset is None:
        if not args.demo:
            ap.error("give a DATASET folder, or --demo")
        args.dataset, _ = make_demo_dataset(work / "demo")
    m = read_manifest(args.dataset)
    names = args.aux or [a.name for a in m.aux]
    for n in names:
        m.aux_layer(n)  # unknown name -> one-line error
    if m.target is None:
        print(f"ablation: {args.dataset} has no target; expected a training dataset",
              file=sys.stderr)
        return 2
    ids = [s.id for s in m.samples]
    val = args.val_samples or ids[-max(1, len(ids) // 4):]
    unknown = sorted(set(val) - set(ids))
    if unknown:
        print(f"ablation: --val-samples {unknown} not in the dataset; available: {ids}",
              file=sys.stderr)
        return 2
    bands = [s.band for s in m.samples if s.id in val]
    coarse = extract_bands(m.path_of(m.coarse), bands, work / "val_coarse.tif")
    truth = extract_bands(m.path_of(m.target), bands, work / "val_truth.tif")
    specs = {a.name: LayerSpec(a.name, str(m.path_of(a)), a.categorical) for a in m.aux}

    combos = [c for k in range(0 if not args.no_empty else 1, len(names) + 1)
              for c in itertools.combinations(names, k)][: args.max_combos]
    print(f"ablation on {args.dataset}: {len(combos)} aux set(s) of {names}; validation "
          f"samples {val}; {args.epochs} epoch(s), <= {args.max_minutes:g} min each")
    rows: list[dict] = []
    for i, combo in enumerate(combos):
        label = "+".join(combo) or "(none)"
        model = work / f"model_{label.replace('+', '_').strip('()')}.geosr"
        try:
            secs = train_model(args.dataset, combo, model, val_samples=val, epochs=args.epochs,
                               max_minutes=args.max_minutes, seed=args.seed, device=args.device)
        except NotImplementedError as e:
            print(f"  skipped {label}: {e}")
            continue
        rep = evaluate(model, coarse=coarse, truth=truth, aux_specs=[specs[n] for n in combo],
                       work=work, device=args.device)
        rows.append({"name": label, "aux": list(combo), "metrics": rep.metrics,
                     "n_valid": rep.n_valid, "train_s": secs,
                     "skill_bicubic": rep.skill["bicubic"]})
        print(f"  [{i + 1}/{len(combos)}] {label}: rmse {rep.metrics['rmse']:.4g}", flush=True)
    # Baselines once, on the same pixels, with every named aux for sharpening.
    from geosr.evaluate.validate import Baseline, ValidateConfig, validate

    ref = validate(ValidateConfig(pred=str(truth), truth=str(truth), coarse=str(coarse),
                                  aux=tuple(specs[n] for n in names),
                                  baselines=(Baseline.bicubic, Baseline.bilinear,
                                             Baseline.sharpen)))
    bic = ref.baselines["bicubic"]["rmse"]
    for name, met in ref.baselines.items():
        rows.append({"name": f"[{name}]", "aux": names if name == "sharpen" else [],
                     "metrics": met, "n_valid": ref.n_valid,
                     "skill_bicubic": 1 - met["rmse"] / bic if bic else math.nan})
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(
            [{**r, "metrics": {k: (v if math.isfinite(v) else None) for k, v in
                               r["metrics"].items()}} for r in rows], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
