"""The end-to-end demo behind ``make demo``: prepare -> train -> downscale -> validate.

It runs the real ``geosr`` command lines (printed as it goes, so they can be copied) on

* the MeteoSwiss 1 km climate grids with the Swiss DEM when ``../shared/data/real`` is
  present: train on May 2023 mean daily maximum and 2022 mean daily minimum temperature,
  then downscale the May 2023 mean temperature — a field the network never saw — from
  16 km back to 1 km and score it against the real 1 km analysis;
* otherwise a generated terrain-driven scene (:mod:`geosr.sample_data`): train on 12
  days, downscale 4 held-out days from 8 km to 500 m.

Nothing is downloaded. Usage::

    python examples/demo.py --out demo-output [--data auto|real|synthetic] [--minutes 3]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

# ../shared beside the checkout
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def _run(args: list[str], log: list[str]) -> None:
    cmd = [sys.executable, "-m", "geosr", *args]
    shown = "geosr " + " ".join(shlex.quote(a) for a in args)
    print(f"\n$ {shown}", flush=True)
    log.append(shown)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    if rc != 0:
        print(f"demo: step failed with exit code {rc}: {shown}", file=sys.stderr)
        sys.exit(rc)
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)


def _plan_real(out: Path) -> dict:
    ch = REAL / "meteoswiss-ch-1km"
    tif = {p.name.split("_")[0]: str(p) for p in (ch / "geotiff").glob("*.tif")}
    dem = f"dem={ch / 'aux' / 'swissAltitude_geostatsp.tif'}"
    return {
        "what": "MeteoSwiss 1 km temperature (CC BY 4.0, Source: MeteoSwiss), Swiss DEM aux, "
                "16 km -> 1 km; trained on TmaxM 2023-05 and TminY 2022, tested on TabsM 2023-05",
        "prepare_train": ["--target", tif["TmaxM"], tif["TminY"], "--aux", dem, "--factor", "16",
                          "--res", "1000", "-o", str(out / "train_ds"), "--overwrite"],
        "prepare_test": ["--target", tif["TabsM"], "--aux", dem, "--factor", "16", "--res", "1000",
                         "-o", str(out / "test_ds"), "--overwrite"],
        "coarse": str(out / "test_ds" / "coarse.tif"),
        "truth": str(out / "test_ds" / "target.tif"),
        "aux": [dem], "res": "1000",
        # Two training fields: hold out the eastern quarter of both to pick the best epoch.
        "train_opts": ["--val-block", "0.25"],
    }


def _plan_synthetic(out: Path) -> dict:
    from geosr.sample_data import write_sample_scene

    scene = write_sample_scene(out / "data", size_px=256, res_m=500.0, factor=16)
    dem = f"dem={scene.dem}"
    return {
        "what": "generated terrain-driven temperature scene (geosr.sample_data), 8 km -> 500 m; "
                "trained on 12 days, tested on 4 held-out days",
        "prepare_train": ["--target", str(scene.train_target), "--aux", dem, "--factor", "16",
                          "--res", "500", "-o", str(out / "train_ds"), "--overwrite"],
        "prepare_test": None,
        "coarse": str(scene.test_coarse), "truth": str(scene.test_truth),
        "aux": [dem], "res": "500",
        "train_opts": [],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python examples/demo.py", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="demo-output", help="folder for everything the demo makes")
    ap.add_argument("--data", choices=["auto", "real", "synthetic"], default="auto")
    ap.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    ap.add_argument("--epochs", type=int, default=60)
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    use_real = args.data == "real" or (
        args.data == "auto" and (REAL / "meteoswiss-ch-1km").is_dir()
    )
    if args.data == "real" and not use_real:
        print(f"demo: {REAL} not found; expected ../shared/data/real beside the repository",
              file=sys.stderr)
        return 2
    plan = _plan_real(out) if use_real else _plan_synthetic(out)
    print(f"geosr demo on {plan['what']}")
    log: list[str] = []
    t0 = time.perf_counter()
    _run(["prepare", *plan["prepare_train"]], log)
    if plan["prepare_test"]:
        _run(["prepare", *plan["prepare_test"]], log)
    model = out / "model.geosr"
    _run(["train", str(out / "train_ds"), "-o", str(model), "--epochs", str(args.epochs),
          "--max-minutes", str(args.minutes), "--seed", "0", *plan["train_opts"], "--overwrite"],
         log)
    pred = out / "prediction.tif"
    _run(["downscale", plan["coarse"], "--aux", *plan["aux"], "--model", str(model),
          "-o", str(pred), "--overwrite"], log)
    figures = out / "figures"
    metrics = out / "metrics.json"
    _run(["validate", str(pred), plan["truth"], "--coarse", plan["coarse"], "--aux",
          *[a.split("=", 1)[1] for a in plan["aux"]], "--plots", str(figures), "--json",
          str(metrics), "--overwrite"], log)
    (out / "commands.txt").write_text("\n".join(log) + "\n")
    summary = json.loads(metrics.read_text())
    m = summary.get("metrics", {})
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    print(f"  prediction (COG): {pred}")
    print(f"  figures:          {figures}")
    print(f"  metrics (JSON):   {metrics}")
    print(f"  commands:         {out / 'commands.txt'}")
    if m:
        line = ", ".join(f"{k} {m[k]:.3f}" for k in ("rmse", "mae", "pearson_r", "ssim")
                         if isinstance(m.get(k), (int, float)))
        print(f"  geosr network:    {line}")
        for name, b in (summary.get("baselines") or {}).items():
            if isinstance(b.get("rmse"), (int, float)):
                print(f"  {name:<16}  rmse {b['rmse']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
