"""The shipped network's ``downscale`` from two source trees, interleaved: speed and output.

A speed change to the network must keep its output: each tree (a checkout or worktree
of geosr, e.g. the main branch and a change) runs ``python -m geosr downscale --model
alps-t2m`` in a fresh process, in turn, ``--repeat`` times, on the synthetic inputs of
``bench_downscale.py`` (4000^2 at 1000 m, factor 16, by default); alternating the trees
lets them share the machine's conditions (a busy, shared machine slows both alike).
Prints per tree the median seconds, Mpx/s and peak RSS, their ratio, and the largest
difference between the two outputs relative to the field's standard deviation.

    python benchmarks/compare_net.py BEFORE_TREE AFTER_TREE [--size 4000] [--repeat 3]

Both trees run with this interpreter (the same torch); each tree's own ``geosr`` and
``models/`` come first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_downscale import FACTOR, RES, make_inputs  # noqa: E402


def run(tree: Path, coarse: Path, dem: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "geosr", "downscale", str(coarse), "--aux", f"dem={dem}",
           "-o", str(out), "--overwrite", "--json", "--res", f"{RES:g}", "--factor",
           str(FACTOR), "--model", str(tree / "models" / "alps-t2m" / "alps-t2m.geosr")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(),
                          env={**os.environ, "PYTHONPATH": str(tree)})
    if proc.returncode != 0:
        raise SystemExit(f"failed in {tree} ({proc.returncode}): {proc.stderr}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path, help="source tree of the reference")
    ap.add_argument("after", type=Path, help="source tree of the change")
    ap.add_argument("--size", type=int, default=4000, help="output pixels per side")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "geosr-bench")
    args = ap.parse_args(argv)

    n = args.size
    dem, coarse = make_inputs(args.data, n)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for i in range(args.repeat):
        for name, tree in trees.items():
            r = run(tree, coarse, dem, args.data / f"compare_{name}_{n}.tif")
            runs[name].append(r)
            print(f"{name:6s} run {i + 1}: {r['seconds']:6.2f} s  "
                  f"predict {r.get('stages', {}).get('predict', float('nan')):6.2f} thread-s  "
                  f"peak RSS {r['peak_rss_mb']:5.0f} MB", flush=True)
    secs = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    for name, tree in trees.items():
        rss = statistics.median(r["peak_rss_mb"] for r in runs[name])
        print(f"{name:6s} {tree}: median {secs[name]:.2f} s, {n * n / 1e6 / secs[name]:.2f} "
              f"Mpx/s, peak RSS {rss:.0f} MB")
    print(f"speed-up (before / after, medians): {secs['before'] / secs['after']:.2f}x")
    with rasterio.open(args.data / f"compare_before_{n}.tif") as src:
        a = src.read(1)
    with rasterio.open(args.data / f"compare_after_{n}.tif") as src:
        b = src.read(1)
    valid = np.isfinite(a)
    same_mask = bool((valid == np.isfinite(b)).all())
    diff = float(np.abs(a[valid] - b[valid]).max() / a[valid].std())
    print(f"output: same nodata mask {same_mask}; max |after - before| = {diff:.2e} x the "
          f"field's std ({a[valid].std():.3f})")


if __name__ == "__main__":
    main()
