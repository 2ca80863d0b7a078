"""The bad-input matrix: every verb, many bad inputs, one contract.

For each case: the exit code (2 input/usage, 1 run-time), exactly one line on stderr
that names the file or option, no traceback, and nothing left under the output name
(no temporary files either).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from typer.testing import CliRunner

from conftest import terrain, write_raster
from geosr.cli import app

runner = CliRunner()
ORIGIN = (600_000.0, 5_150_000.0)


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]          # {name} placeholders are replaced by fixture paths
    code: int
    needles: tuple[str, ...]  # all must appear in the error line
    out: str = "{out}"        # the output that must not exist afterwards


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
    f["nogeo"] = write_raster(d / "nogeo.tif", dem, crs=None, transform=Affine.identity())
    f["allnan"] = write_raster(d / "allnan.tif", np.full((64, 64), np.nan), res=1000, origin=ORIGIN)
    f["geo"] = write_raster(d / "geo.tif", dem, crs="EPSG:4326",
                            transform=Affine(0.01, 0, -120.0, 0, -0.01, -10.0))
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
    return {k: str(v) for k, v in f.items()}


PREPARE = [
    Case("prepare-missing-file", ["prepare", "--target", "{missing}", "--factor", "8", "-o", "{out}"],
         2, ("missing.tif", "not found")),
    Case("prepare-not-a-raster", ["prepare", "--target", "{text}", "--factor", "8", "-o", "{out}"],
         2, ("notes.tif", "not a readable raster")),
    Case("prepare-truncated", ["prepare", "--target", "{truncated}", "--factor", "8", "-o", "{out}"],
         2, ("truncated.tif",)),
    Case("prepare-no-crs", ["prepare", "--target", "{nocrs}", "--factor", "8", "-o", "{out}"],
         2, ("nocrs.tif", "no CRS")),
    Case("prepare-no-geotransform", ["prepare", "--target", "{nogeo}", "--factor", "8", "-o", "{out}"],
         2, ("nogeo.tif",)),
    Case("prepare-no-overlap", ["prepare", "--target", "{target}", "--aux", "{far}", "--factor", "8",
                                "-o", "{out}"], 2, ("far.tif", "overlap 0%")),
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
    Case("prepare-factor-too-big", ["prepare", "--target", "{target}", "--factor", "65", "-o", "{out}"],
         2, ("--factor", "65")),
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
                                     "{readonly}/ds"], 2, ("not writable",), out="{readonly}/ds"),
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

CASES: list[Case] = [*PREPARE]


def _fill(text: str, files: dict[str, str], out: Path) -> str:
    return text.format(out=str(out), **files)


def run_case(case: Case, files: dict[str, str], tmp_path: Path):
    out = tmp_path / "result"
    argv = [_fill(a, files, out) for a in case.argv]
    parents = {Path(a).parent for a in argv if "/" in a and Path(a).parent.exists()}
    before = {p: set(p.iterdir()) for p in parents}
    result = runner.invoke(app, argv)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    return result, lines, out, before


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, files, tmp_path):
    if case.id == "prepare-output-readonly" and shutil.os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    result, lines, out, before = run_case(case, files, tmp_path)
    assert result.exit_code == case.code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert len(lines) == 1, lines
    for needle in case.needles:
        assert needle in lines[0], (needle, lines[0])
    if case.out:
        assert not Path(_fill(case.out, files, out)).exists()
    for folder, entries in before.items():
        new = {p.name for p in set(folder.iterdir()) - entries}
        assert not {n for n in new if ".geosr-tmp" in n}, new
