"""Faults a batch pipeline meets: runs killed mid-write, training killed mid-epoch, a full
disk, and model or checkpoint files crafted to run code when loaded.

The interrupted runs are real processes (``python -c`` around the CLI) that get a real
signal; a small delay per tile or per training step keeps them mid-run long enough for
the signal to land there whatever the load on the machine.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from _helpers_train import TINY_ARCH_CLI, make_dataset
from conftest import terrain, write_raster
from typer.testing import CliRunner

from geosr.cli import app
from geosr.errors import BundleError
from geosr.io.atomic import TMP_TAG
from geosr.model.bundle import load_bundle

ORIGIN = (600_000.0, 5_152_000.0)  # on whole 8 km cells
F = 8
runner = CliRunner()

# The CLI with a delay in every tile (downscale) or training step, so a run is still
# going when the test signals it. Nothing else changes.
SLOW_CLI = textwrap.dedent("""
    import os, sys, time
    delay = float(os.environ["GEOSR_TEST_DELAY"])
    import geosr.inference.engine as ds, geosr.training.loop as tr
    def slowed(f):
        def run(*a, **k):
            time.sleep(delay)
            return f(*a, **k)
        return run
    ds.predict_tiles = slowed(ds.predict_tiles)
    tr.read_batch = slowed(tr.read_batch)
    from geosr.cli import app
    app(prog_name="geosr")
""")


def _start(args: list[str], cwd: Path, *, delay: float, **kw) -> subprocess.Popen:
    env = {**os.environ, "GEOSR_TEST_DELAY": str(delay), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t_end = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before the fault: {err[-2000:]}")
        if time.monotonic() > t_end:
            proc.kill()
            pytest.fail("the run never reached the point of the fault")
        time.sleep(0.02)


def _temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if TMP_TAG in p.name)


# --------------------------------------------------------------------------- downscale


@pytest.fixture
def scene(tmp_path) -> dict[str, Path]:
    """16 x 16 cells of 8 km over a 1 km DEM: 128 x 128 output pixels."""
    dem = terrain((16 * F, 16 * F), seed=2)
    t = 15 - 0.0065 * dem
    coarse = t.reshape(16, F, 16, F).mean(axis=(1, 3))[None]
    src = tmp_path / "src"
    src.mkdir()
    return {"coarse": write_raster(src / "t2m.tif", coarse, res=1000.0 * F, origin=ORIGIN),
            "dem": write_raster(src / "dem.tif", dem, res=1000.0, origin=ORIGIN)}


def _downscale_args(scene, out: Path) -> list[str]:
    # 64 tiles of 16 px, one at a time: with a delay per tile the run lasts seconds.
    return ["downscale", str(scene["coarse"]), "--aux", str(scene["dem"]), "-o", str(out),
            "--res", "1000", "--tile", "16", "--overlap", "16", "--workers", "1"]


def _reference(scene, tmp_path) -> np.ndarray:
    ref = tmp_path / "ref" / "ref.tif"
    ref.parent.mkdir()
    r = runner.invoke(app, _downscale_args(scene, ref))
    assert r.exit_code == 0, r.stderr
    with rasterio.open(ref) as src:
        return src.read()


def _interrupt_downscale(scene, tmp_path, sig: int):
    """A downscale into ``tmp_path/out`` sent ``sig`` a few tiles into its stage file."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "t2m_1km.tif"
    proc = _start(_downscale_args(scene, out), tmp_path, delay=0.1)
    _wait_for(lambda: bool(_temps(out_dir)), proc)
    time.sleep(0.3)  # a few tiles into the stage file
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc, err, out_dir, out


def test_sigkill_mid_write_leaves_only_tagged_temporaries(scene, tmp_path):
    proc, _, out_dir, out = _interrupt_downscale(scene, tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    left = [p for p in out_dir.iterdir()]
    assert left and all(TMP_TAG in p.name and p.name.startswith(".") for p in left), left
    assert glob.glob(str(out_dir / "*.tif")) == []  # hidden from the usual globs
    # the next run with the same -o ignores the leftovers and writes a complete output
    r = runner.invoke(app, _downscale_args(scene, out))
    assert r.exit_code == 0, r.stderr
    with rasterio.open(out) as src:
        arr, tags = src.read(), src.tags()
    np.testing.assert_array_equal(arr, _reference(scene, tmp_path))
    assert set(_temps(out_dir)) == set(left)  # untouched: they may be another run's
    # provenance tags hold the user's own paths, nothing else
    assert tags["GEOSR_SOURCE"] == os.path.abspath(scene["coarse"])
    assert tags["GEOSR_AUX_FILES"] == f"dem={os.path.abspath(scene['dem'])}"


def test_sigint_mid_write_removes_the_temporaries(scene, tmp_path):
    proc, err, out_dir, out = _interrupt_downscale(scene, tmp_path, signal.SIGINT)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["geosr downscale: interrupted; no partial output was kept"], err
    assert list(out_dir.iterdir()) == []
    r = runner.invoke(app, _downscale_args(scene, out))
    assert r.exit_code == 0, r.stderr
    assert [p.name for p in out_dir.iterdir()] == [out.name]


def test_sigterm_mid_write_removes_the_temporaries(scene, tmp_path):
    """What SLURM, `timeout` and `docker stop` send: handled like Ctrl-C, exit 143."""
    proc, err, out_dir, out = _interrupt_downscale(scene, tmp_path, signal.SIGTERM)
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["geosr downscale: terminated (SIGTERM); no partial output was kept"], err
    assert list(out_dir.iterdir()) == []


def test_sigterm_during_prepare_leaves_no_folder(scene, tmp_path):
    out = tmp_path / "ds"
    big = write_raster(tmp_path / "src" / "big.tif", terrain((1200, 1200), seed=4),
                       res=100.0, origin=ORIGIN)
    proc = _start(["prepare", "--target", str(big), "--aux", str(scene["dem"]), "--res",
                   "100", "--factor", "8", "-o", str(out)], tmp_path, delay=0.0)
    _wait_for(lambda: any(TMP_TAG in p.name for p in tmp_path.iterdir()), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("prepare finished before the signal")
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM); no partial output was kept" in err
    assert not out.exists() and not any(TMP_TAG in p.name for p in tmp_path.iterdir())


def _limit_file_size(limit: int):
    def preexec() -> None:
        # A write past the limit then fails with EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_disk_full_in_a_real_process_leaves_nothing(scene, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "t2m_1km.tif"
    proc = _start(_downscale_args(scene, out), tmp_path, delay=0.0,
                  preexec_fn=_limit_file_size(20_000))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    # GDAL's TIFF layer may also print its own diagnostic ("_tiffWriteProc: File too
    # large.") straight to the C stderr; geosr's own output is the one error line.
    lines = [ln for ln in err.splitlines() if ln.startswith("geosr")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"geosr downscale: error: {out}: "), lines[0]
    assert "file-size limits" in lines[0] and "nothing was left" in lines[0], lines[0]
    assert list(out_dir.iterdir()) == []


COG_UNDER_LIMIT = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    from affine import Affine
    from geosr.errors import ProcessingError
    from geosr.grid import Grid
    from geosr.io import open_stream_writer, translate_to_cog
    grid = Grid("EPSG:32632", Affine(500, 0, 600000, 0, -500, 5152000), 1024, 1024)
    dst = open_stream_writer("stage.tif", grid, 1)
    dst.write(np.random.default_rng(0).random((1, 1024, 1024), dtype=np.float32))
    dst.close()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, resource.RLIM_INFINITY))
    try:
        translate_to_cog("stage.tif", "out.tif")
    except ProcessingError as e:
        print("REFUSED", e)
    else:
        print("WROTE")
""")


def test_cog_cut_short_by_a_full_disk_is_not_taken_for_complete(tmp_path):
    """GDAL's multi-threaded COG writer closes a file it failed to write without an
    error; translate_to_cog must notice (the stage file alone fits the limit)."""
    r = subprocess.run([sys.executable, "-c", COG_UNDER_LIMIT], cwd=tmp_path, text=True,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("REFUSED"), r.stdout + r.stderr
    assert "out.tif" in r.stdout and "file-size limits" in r.stdout


# --------------------------------------------------------------------------- training


FAST = ["--patch", "4", "--batch-size", "4", "--steps-per-epoch", "4", "--device", "cpu",
        "--threads", "1", "--seed", "7", *TINY_ARCH_CLI]


@pytest.fixture
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_training_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, _restore_threads):
    ds = make_dataset(tmp_path)
    epochs = ["--epochs", "3"]
    killed = tmp_path / "killed.geosr"
    ckpt = killed.with_suffix(".ckpt")
    proc = _start(["train", str(ds), "-o", str(killed), *epochs, *FAST], tmp_path, delay=0.15)
    _wait_for(ckpt.exists, proc)
    time.sleep(0.3)  # into epoch 2 (four steps of at least 0.15 s each)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not killed.exists()
    done = torch.load(ckpt, weights_only=True)
    assert 1 <= json.loads(done["meta"])["epoch"] < 3  # killed before the end

    r = runner.invoke(app, ["train", str(ds), "-o", str(killed), *epochs, *FAST,
                            "--resume", str(ckpt)])
    assert r.exit_code == 0, r.stderr
    full = tmp_path / "full.geosr"
    r = runner.invoke(app, ["train", str(ds), "-o", str(full), *epochs, *FAST])
    assert r.exit_code == 0, r.stderr

    a = torch.load(full.with_suffix(".ckpt"), weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert load_bundle(killed).sha256 == load_bundle(full).sha256
    assert not _temps(tmp_path)


# --------------------------------------------------------------------------- security


class _Evil:
    """Unpickling this creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(kind: str, path: Path, marker: Path, fmt: str) -> Path:
    payload = {"format": fmt, "format_version": 1, "meta": "{}",
               "state_dict": {"w": torch.zeros(1)}, "x": _Evil(marker)}
    if kind == "torch-archive":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


def _one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.mark.parametrize("kind", ["torch-archive", "raw-pickle"])
def test_crafted_bundle_never_runs(kind, scene, tmp_path):
    marker = tmp_path / "pwned"
    evil = _crafted(kind, tmp_path / "evil.geosr", marker, "geosr-bundle")
    with pytest.raises(BundleError, match="refused") as e:
        load_bundle(evil)
    assert str(evil) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
    out = tmp_path / "o.tif"
    r = runner.invoke(app, ["downscale", str(scene["coarse"]), "--aux", str(scene["dem"]),
                            "--model", str(evil), "-o", str(out)])
    assert r.exit_code == 2
    line = _one_line(r)
    assert str(evil) in line and "refused" in line
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("kind", ["torch-archive", "raw-pickle"])
def test_crafted_checkpoint_never_runs(kind, tmp_path):
    ds = make_dataset(tmp_path)
    marker = tmp_path / "pwned"
    evil = _crafted(kind, tmp_path / "evil.ckpt", marker, "geosr-checkpoint")
    out = tmp_path / "m.geosr"
    r = runner.invoke(app, ["train", str(ds), "-o", str(out), "--epochs", "1", *FAST,
                            "--resume", str(evil)])
    assert r.exit_code == 2
    line = _one_line(r)
    assert "--resume" in line and str(evil) in line and "refused" in line
    assert not marker.exists() and not out.exists()
    assert not out.with_suffix(".ckpt").exists()


def test_sigterm_during_training_keeps_the_last_checkpoint(tmp_path):
    """SLURM's time limit mid-epoch: exit 143, one line, no model, no temporaries, and the
    checkpoint of the last complete epoch intact for --resume."""
    ds = make_dataset(tmp_path)
    out = tmp_path / "m.geosr"
    ckpt = out.with_suffix(".ckpt")
    proc = _start(["train", str(ds), "-o", str(out), "--epochs", "5", *FAST], tmp_path,
                  delay=0.15)
    _wait_for(ckpt.exists, proc)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("geosr train: terminated (SIGTERM)"), err
    assert "checkpoint" in lines[0] and "--resume" in lines[0]
    assert not out.exists() and not _temps(tmp_path)
    done = torch.load(ckpt, weights_only=True)
    assert 1 <= json.loads(done["meta"])["epoch"] < 5
