"""Training throughput of ``geosr train``: patches/s and fine Mpx/s per optimisation step.

Prepares a generated terrain-driven scene (:mod:`geosr.sample_data`, factor 16 at 500 m)
in a temporary folder, then runs :func:`geosr.train` (the engine of ``geosr train``)
for one epoch of ``--steps`` steps, ``--repeat`` times after a warm-up run, and reports
the median rate. The epoch time includes its validation pass (the scene's held-out
days, a small share of the time).

    python benchmarks/bench_train.py [--device cpu|cuda] [--threads N] [--batch-size 16]
        [--patch 6] [--steps 40] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from geosr.dataset.prepare import PrepareConfig, prepare
from geosr.sample_data import write_sample_scene
from geosr.sources import LayerSpec
from geosr.training.config import TrainConfig
from geosr.training.loop import train

FACTOR = 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patch", type=int, default=6, help="patch size in coarse cells")
    ap.add_argument("--steps", type=int, default=40, help="optimisation steps per run")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="geosr-bench-train-") as tmp:
        work = Path(tmp)
        scene = write_sample_scene(work / "data", size_px=512, res_m=500.0, factor=FACTOR)
        ds = work / "ds"
        prepare(PrepareConfig(out_dir=ds, target=(str(scene.train_target),),
                              aux=(LayerSpec("dem", str(scene.dem)),), res_m=500.0,
                              factor=FACTOR))
        rates = []
        for i in range(args.repeat + 1):  # the first run warms up (allocator, oneDNN)
            t0 = time.perf_counter()
            res = train(TrainConfig(dataset=ds, out=work / "m.geosr", epochs=1,
                                    steps_per_epoch=args.steps, batch_size=args.batch_size,
                                    patch=args.patch, device=args.device,
                                    threads=args.threads, overwrite=True, seed=i))
            total = time.perf_counter() - t0
            if i:
                rates.append(args.steps * args.batch_size / res.history[-1]["seconds"])
            print(f"run {i}: {total:.1f} s total, epoch {res.history[-1]['seconds']:.2f} s",
                  flush=True)
    px = (args.patch * FACTOR) ** 2
    med = statistics.median(rates)
    print(f"train {args.device}: batch {args.batch_size} x {args.patch * FACTOR}^2 px patches, "
          f"{med:.1f} patches/s = {med * px / 1e6:.2f} fine Mpx/s "
          f"(median of {len(rates)}; epoch time incl. one validation pass)")


if __name__ == "__main__":
    main()
