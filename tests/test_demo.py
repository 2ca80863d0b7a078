"""`make demo` end to end on the generated scene (tiny training budget)."""

import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "geosr_demo", Path(__file__).resolve().parents[1] / "examples" / "demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


def test_demo_runs_end_to_end_on_generated_data(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = demo.main(["--out", str(out), "--data", "synthetic", "--epochs", "2", "--minutes", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "prediction (COG)" in printed and "geosr network" in printed
    assert (out / "prediction.tif").stat().st_size > 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["n_valid"] > 0 and "sharpen" in report["baselines"]
    assert any((out / "figures").glob("*.png"))
    commands = (out / "commands.txt").read_text().splitlines()
    assert [c.split()[1] for c in commands] == ["prepare", "train", "downscale", "validate"]
    # a second `make demo` into the same folder replaces the first run's outputs
    rc = demo.main(["--out", str(out), "--data", "synthetic", "--epochs", "1", "--minutes", "1"])
    assert rc == 0
    assert json.loads((out / "metrics.json").read_text())["n_valid"] == report["n_valid"]
