"""The shipped network's ``downscale`` from two source trees, interleaved: speed and output.

A speed change to the network must keep its output: each tree (a checkout or worktree
of geosr, e.g. the main branch and a change) runs ``python -m geosr downscale --model
alps-t2m`` in a fresh process, in turn, ``--repeat`` times, on the synthetic inputs of
``bench_downscale.py`` (4000^2 at 1000 m, factor 16, by default); alternating the trees
lets them share the machine's conditions (a busy, shared machine slows both alike).
Prints per tree the median seconds, Mpx/s and peak RSS, their ratio, and the largest
difference between the two outputs relative to the field's standard deviation. With
``--whole``, also each output's largest difference from the raster predicted in one
piece (the after tree with one tile covering the area): what tiling changes.

    python benchmarks/compare_net.py BEFORE_TREE AFTER_TREE [--size 4000] [--repeat 3]
        [--whole]

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


def run(tree: Path, coarse: Path, dem: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "geosr", "downscale", str(coarse), "--aux", f"dem={dem}",
           "-o", str(out), "--overwrite", "--json", "--res", f"{RES:g}", "--factor",
           str(FACTOR), "--model", str(tree / "models" / "alps-t2m" / "alps-t2m.geosr"),
           *extra]
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
    ap.add_argument("--whole", action="store_true",
                    help="also compare each output with the raster predicted in one piece")
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
    a, b = (_read(args.data / f"compare_{k}_{n}.tif") for k in ("before", "after"))
    same_mask, diff = _compare(b, a)
    print(f"output: same nodata mask {same_mask}; max |after - before| = {diff:.2e} x the "
          f"field's std ({np.nanstd(a):.3f})")
    if args.whole:
        whole = args.data / f"compare_whole_{n}.tif"
        r = run(trees["after"], coarse, dem, whole, "--tile", str(n))
        print(f"one piece (after tree, --tile {n}): {r['seconds']:.2f} s, peak RSS "
              f"{r['peak_rss_mb']:.0f} MB")
        ref = _read(whole)
        for name, out in (("before", a), ("after", b)):
            same_mask, diff = _compare(out, ref)
            print(f"{name:6s}: max |tiled - one piece| = {diff:.2e} x the field's std "
                  f"(same nodata mask {same_mask})")


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _compare(got: np.ndarray, ref: np.ndarray) -> tuple[bool, float]:
    """(same nodata mask, largest difference over the field's std)."""
    valid = np.isfinite(ref)
    same_mask = bool((valid == np.isfinite(got)).all())
    return same_mask, float(np.abs(got[valid] - ref[valid]).max() / ref[valid].std())


if __name__ == "__main__":
    main()
