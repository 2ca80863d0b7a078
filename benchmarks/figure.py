"""The README figure: truth / bicubic / regression sharpening / geosr on a field never trained on.

Runs the real command lines on MeteoSwiss TabsM (May 2023 mean temperature): the 1 km
field is averaged to 16 km (``geosr prepare``), then downscaled back to 1 km with
``--method bicubic``, ``--method sharpen`` and ``--model alps-t2m`` (the shipped model,
trained on other fields), and the four maps are drawn over the same colour scale.

    python benchmarks/figure.py [--out docs/img/readme-figure.png] [--model alps-t2m]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import CH, meteoswiss  # noqa: E402

from geosr.evaluate import metrics  # noqa: E402


def geosr(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "geosr", "--quiet", *args], check=True)


def read(path: Path) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    with rasterio.open(path) as src:
        b = src.bounds
        return src.read(1, masked=True).filled(np.nan), (b.left, b.right, b.bottom, b.top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img/readme-figure.png"))
    ap.add_argument("--model", default="alps-t2m")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dem = f"dem={CH / 'aux' / 'swissAltitude_geostatsp.tif'}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        geosr("prepare", "--target", str(meteoswiss("TabsM")), "--aux", dem, "--factor", "16",
              "--res", "1000", "-o", str(work / "ds"))
        coarse = work / "ds" / "coarse.tif"
        outs = {}
        base = ["--res", "1000", "--factor", "16"]
        for label, opts in (("bicubic", ["--method", "bicubic", *base]),
                            ("regression sharpening", ["--method", "sharpen", *base]),
                            ("geosr network", ["--model", args.model])):
            out = work / f"{label.split()[0]}.tif"
            geosr("downscale", str(coarse), "--aux", dem, *opts, "-o", str(out))
            outs[label] = out
        truth, extent = read(work / "ds" / "target.tif")
        coarse_arr, _ = read(coarse)
        panels = {"MeteoSwiss 1 km (truth)": truth, "input: 16 km mean": coarse_arr}
        for label, path in outs.items():
            panels[label] = read(path)[0]
    vmin, vmax = np.nanpercentile(truth, [1, 99])
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.2), constrained_layout=True)
    for ax, (label, arr) in zip(axes.flat, panels.items(), strict=False):
        im = ax.imshow(arr, extent=extent, cmap="RdYlBu_r", vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        title = label
        if arr.shape == truth.shape and "truth" not in label:
            title += f"  (RMSE {metrics.rmse(arr, truth):.2f} °C)"
        ax.set_title(title, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    err = panels["geosr network"] - truth
    ax = axes.flat[5]
    lim = float(np.nanpercentile(np.abs(err), 99))
    im2 = ax.imshow(err, extent=extent, cmap="RdBu_r", vmin=-lim, vmax=lim,
                    interpolation="nearest")
    ax.set_title("geosr − truth (°C)", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=list(axes.flat[:5]), shrink=0.6,
                 label="May 2023 mean temperature (°C)")
    fig.colorbar(im2, ax=ax, shrink=0.6)
    fig.suptitle("MeteoSwiss TabsM May 2023, 16 km → 1 km with the Swiss DEM "
                 "(a field the model never saw). Source: MeteoSwiss", fontsize=12)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
