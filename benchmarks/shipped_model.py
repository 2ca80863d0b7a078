"""The shipped ``alps-t2m`` model on inputs shaped like users' files, beside the baselines.

Cases (``../shared/data/real``), each through the public API (:func:`geosr.downscale`
with the DEM, then :func:`geosr.validate` with ``coarse=`` the test file, which scores
bicubic and regression sharpening on the same pixels):

- ``tabsm-ch``: MeteoSwiss TabsM 2023-05 (a field the model never saw), averaged into
  16 km cells on the file's own grid (edges 3/5 km off prepare's lattice), -> 1 km.
- ``tabsm-ch-32km``: the same field at 32 km -> 2 km (another scale, same factor).
- ``tasmax-uk`` / ``tasmin-uk``: HadUK-Grid daily max / min temperature, Cornwall, May
  2018 (31 days), 16 km -> 1 km with the Cornish DEM: another region, daily fields.

The test inputs are built as in ``generalisation.py`` (:func:`generalisation.coarse_file`).
Give ``--model NAME=BUNDLE`` (repeatable) to compare bundles, e.g. a retrained one
against the shipped one (``git show HEAD~1:models/alps-t2m/alps-t2m.geosr > old.geosr``).

    python benchmarks/shipped_model.py [--model new=a.geosr --model old=b.geosr]
        [--cases tabsm-ch ...] [--work /tmp/geosr-shipped] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import UK, meteoswiss  # noqa: E402
from generalisation import CH_DEM, UK_DEM, Case, run_case  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "alps-t2m" / "alps-t2m.geosr"
DAYS = tuple(range(1, 32))


def cases() -> dict[str, Case]:
    tabs = meteoswiss("TabsM")
    return {c.key: c for c in (
        Case("tabsm-ch", "unseen field", "MeteoSwiss TabsM 2023-05, 16 km -> 1 km", "",
             tabs, (1,), CH_DEM, 16),
        Case("tabsm-ch-32km", "scale", "MeteoSwiss TabsM 2023-05, 32 km -> 2 km", "",
             tabs, (1,), CH_DEM, 16, res_km=2, offset_km=(6, 10)),
        Case("tasmax-uk", "region", "HadUK tasmax May 2018 (31 days), 16 km -> 1 km", "",
             UK / "target" / "tasmax1km.tif", DAYS, UK_DEM, 16),
        Case("tasmin-uk", "region", "HadUK tasmin May 2018 (31 days), 16 km -> 1 km", "",
             UK / "target" / "tasmin1km.tif", DAYS, UK_DEM, 16),
    )}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    keys = list(cases())
    ap.add_argument("--model", action="append", default=None, metavar="NAME=BUNDLE",
                    help=f"bundle(s) to score (default: alps-t2m={SHIPPED})")
    ap.add_argument("--cases", nargs="+", default=keys, choices=keys)
    ap.add_argument("--work", type=Path, default=Path("/tmp/geosr-shipped"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    specs = args.model or [f"alps-t2m={SHIPPED}"]
    models = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--model {spec!r}: expected NAME=BUNDLE with an existing bundle file")
        models[name] = Path(path)
    report = {}
    for key in args.cases:
        case = cases()[key]
        rec = run_case(case, models, args.work)
        report[key] = rec
        s = rec["scores"]
        best = min(s["bicubic"]["rmse"], s["sharpen"]["rmse"])
        print(f"## {key}: {case.label} (degC; {s['bicubic']['pixels']} px)")
        print(f"{'method':<14}{'RMSE':>8}{'MAE':>8}{'bias':>8}{'SSIM':>8}{'/best bl.':>11}")
        for name in ("bicubic", "sharpen", *models):
            v = s[name]
            print(f"{name:<14}{v['rmse']:8.3f}{v['mae']:8.3f}{v['bias']:8.3f}{v['ssim']:8.3f}"
                  f"{v['rmse'] / best:10.2f}x")
        shifts = {k: v for k, v in rec["domain_shift"].items() if v and v != "none"}
        if shifts:
            print("domain shift: " + "; ".join(f"{k}: {v}" for k, v in shifts.items()))
        print(flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
