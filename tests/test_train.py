"""``geosr train``: the loop, resume, splits, losses, the CLI and its errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _helpers_train import TINY_ARCH, TINY_ARCH_CLI, make_dataset, make_scene
from conftest import REAL
from typer.testing import CliRunner

from geosr.cli import app
from geosr.dataset.manifest import read_manifest
from geosr.errors import BundleError, InputError, OutputExistsError
from geosr.model.bundle import load_bundle
from geosr.model.predictor import Predictor
from geosr.training.config import Loss, TrainConfig, side_paths
from geosr.training.data import (
    DatasetReader,
    SplitKind,
    make_split,
    plan_patches,
    read_batch,
    training_scenes,
)
from geosr.training.loop import lr_factor, recon_loss, train, validate

FAST = dict(patch=4, batch_size=4, steps_per_epoch=4, arch=TINY_ARCH, device="cpu", threads=1)
FAST_CLI = ["--patch", "4", "--batch-size", "4", "--steps-per-epoch", "4", "--device", "cpu",
            "--threads", "1", *TINY_ARCH_CLI]


@pytest.fixture
def tiny_dataset(tmp_path):
    """Four days of a 48 x 48 km DEM-driven temperature scene, factor 4, aux ``dem``."""
    return make_dataset(tmp_path)


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run_cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res


def one_line_error(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


# --------------------------------------------------------------------------- end to end


def test_cli_end_to_end(tiny_dataset, tmp_path):
    out = tmp_path / "m.geosr"
    res = run_cli("train", tiny_dataset, "-o", out, "--epochs", "2", *FAST_CLI)
    assert res.exit_code == 0, res.output
    assert "val RMSE" in res.output and f"wrote {out}" in res.output
    ckpt, log_csv, log_json = side_paths(out)
    assert ckpt.exists() and log_csv.exists() and log_json.exists()
    rows = log_csv.read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_rmse") and len(rows) == 3
    log = json.loads(log_json.read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert all(e["seconds"] > 0 for e in log["epochs"])
    b = load_bundle(out)
    assert b.aux_names == ("dem",) and b.factor == 4 and b.res_m == 1000.0
    assert b.variable == "t2m" and b.config.conserve is True
    r = b.training_range()  # the coarse training input, for downscale's range check
    assert r.min < r.mean < r.max and r.mean == pytest.approx(b.norm["coarse"]["mean"])
    t = b.training
    assert t["epochs"] == 2 and t["best_epoch"] in (1, 2) and t["val"]["rmse"] > 0
    assert t["split"]["kind"] == "fraction" and t["split"]["val_samples"] == ["t2m_b004"]
    assert t["seed"] == 0 and t["loss"] == "l1" and t["gan"] is False and t["device"] == "cpu"
    # leaves nothing else behind (no temporary files)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("m.")) == \
        ["m.ckpt", "m.geosr", "m.log.csv", "m.log.json"]


def test_cli_json_summary(tiny_dataset, tmp_path):
    out = tmp_path / "m.geosr"
    res = run_cli("train", tiny_dataset, "-o", out, "--epochs", "1", "--json", *FAST_CLI)
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["out"] == str(out) and d["epochs"] == 1 and d["val"]["rmse"] > 0
    assert d["sha256"] == load_bundle(out).sha256 and d["val_rmse_bilinear"] > 0


def test_trained_model_conserves_coarse_means(tiny_dataset, tmp_path):
    res = train(TrainConfig(dataset=tiny_dataset, out=tmp_path / "m.geosr", epochs=2, **FAST))
    m = read_manifest(tiny_dataset)
    with DatasetReader(m, ("dem",), (1,)) as rd:
        from rasterio.windows import Window

        coarse = rd.coarse(1, Window(0, 0, 12, 12))
        aux = rd.aux(Window(0, 0, 48, 48))
    out = Predictor(res.bundle).predict(coarse[None], aux[None])[0]
    means = out.reshape(12, 4, 12, 4).mean(axis=(1, 3))
    ok = np.isfinite(coarse)
    assert ok.sum() > 100
    np.testing.assert_allclose(means[ok], coarse[ok], atol=1e-4)
    assert np.isnan(out[~np.repeat(np.repeat(ok, 4, 0), 4, 1)]).all()


def test_windowed_reads_match_the_in_memory_cache(tiny_dataset, tmp_path):
    """Datasets too big for the cache are read patch by patch; the result is the same."""
    cached = train(TrainConfig(dataset=tiny_dataset, out=tmp_path / "a.geosr", epochs=1, **FAST))
    windowed = train(TrainConfig(dataset=tiny_dataset, out=tmp_path / "b.geosr", epochs=1,
                                 cache_mb=0, **FAST))
    m = read_manifest(tiny_dataset)
    with DatasetReader(m, ("dem",), (1, 2), cache_mb=0) as rd:
        assert not rd.cached
    assert cached.bundle.sha256 == windowed.bundle.sha256


def test_no_conserve_is_recorded(tiny_dataset, tmp_path):
    res = train(TrainConfig(dataset=tiny_dataset, out=tmp_path / "m.geosr", epochs=1,
                            conserve=False, **FAST))
    assert load_bundle(res.out).config.conserve is False


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_dataset, tmp_path):
    full = train(TrainConfig(dataset=tiny_dataset, out=tmp_path / "full.geosr", epochs=4, **FAST))

    def interrupt(ev):
        if ev.kind == "epoch" and ev.epoch == 2:
            raise KeyboardInterrupt

    cfg = TrainConfig(dataset=tiny_dataset, out=tmp_path / "part.geosr", epochs=4, **FAST)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=interrupt)
    ckpt = side_paths(cfg.out)[0]
    assert ckpt.exists() and not cfg.out.exists()
    # the same command without --resume refuses to clobber the checkpoint
    with pytest.raises(OutputExistsError, match="--resume"):
        train(cfg)
    resumed = train(TrainConfig(**{**cfg.__dict__, "resume": ckpt}))
    a = torch.load(side_paths(full.out)[0], weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert resumed.bundle.sha256 == full.bundle.sha256
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for x, y in zip(full.history, resumed.history, strict=True):
        assert x["val_rmse"] == pytest.approx(y["val_rmse"], abs=1e-9)


def test_resume_with_other_options_is_refused(tiny_dataset, tmp_path):
    cfg = TrainConfig(dataset=tiny_dataset, out=tmp_path / "m.geosr", epochs=1, **FAST)
    train(cfg)
    other = TrainConfig(**{**cfg.__dict__, "out": tmp_path / "n.geosr", "patch": 3,
                           "resume": side_paths(cfg.out)[0]})
    with pytest.raises(BundleError, match=r"--resume .*--patch = 4 .* 3"):
        train(other)


def test_max_minutes_stops_cleanly_and_keeps_the_best_model(tiny_dataset, tmp_path):
    res = train(TrainConfig(dataset=tiny_dataset, out=tmp_path / "m.geosr", epochs=50,
                            max_minutes=1e-5, **FAST))
    assert res.stopped == "max-minutes"
    assert len(res.history) == 1 and res.history[0]["partial"] is True
    b = load_bundle(res.out)
    assert b.training["stopped"] == "max-minutes" and b.training["epochs"] == 0
    # the bundle holds the weights that scored the logged best RMSE
    m = read_manifest(tiny_dataset)
    split = make_split(m, val_fraction=0.2)
    with DatasetReader(m, ("dem",), (1, 2, 3, 4)) as rd:
        scenes = training_scenes(rd, (1, 2, 3, 4), b.aux, m.factor,
                                 train_std=b.norm["coarse"]["std"],
                                 aux_scene=b.config.scene_aux)
        metrics, _ = validate(b.build_model(), rd, m, split, b.aux, b.norm, torch.device("cpu"),
                              scenes=scenes)
    assert metrics["rmse"] == pytest.approx(b.training["val"]["rmse"], rel=1e-6)


def test_best_epoch_is_what_the_bundle_keeps(tiny_dataset, tmp_path):
    res = train(TrainConfig(dataset=tiny_dataset, out=tmp_path / "m.geosr", epochs=3, **FAST))
    rmses = [h["val_rmse"] for h in res.history]
    assert res.best_epoch == int(np.argmin(rmses)) + 1
    assert res.bundle.training["val"]["rmse"] == pytest.approx(min(rmses))


def test_gan_and_gradient_loss_train(tiny_dataset, tmp_path):
    res = train(TrainConfig(dataset=tiny_dataset, out=tmp_path / "g.geosr", epochs=1, gan=True,
                            loss=Loss.l1_grad, **FAST))
    assert res.history[0]["d_loss"] > 0 and math.isfinite(res.history[0]["train_loss"])
    assert res.bundle.training["gan"] is True and res.bundle.training["loss"] == "l1+grad"


# --------------------------------------------------------------------------- ablation


def test_aux_subset_is_recorded_and_enforced(tmp_path):
    ds = make_dataset(tmp_path, categorical=True)
    res = train(TrainConfig(dataset=ds, out=tmp_path / "lc.geosr", epochs=1, aux=("lc",), **FAST))
    b = load_bundle(res.out)
    assert b.aux_names == ("lc",) and b.aux[0].categorical and b.aux[0].classes == (0.0, 1.0, 2.0)
    assert b.channels == ["lc=0", "lc=1", "lc=2"] and b.config.n_aux == 3
    assert b.training["aux"] == ["lc"]
    p = Predictor(b)
    coarse = np.full((1, 3, 3), 10.0, np.float32)
    assert p.predict(coarse, np.ones((1, 1, 12, 12), np.float32)).shape == (1, 12, 12)
    with pytest.raises(BundleError, match="1 aux layer"):
        p.predict(coarse, np.ones((1, 2, 12, 12), np.float32))
    every = train(TrainConfig(dataset=ds, out=tmp_path / "all.geosr", epochs=1, **FAST))
    assert every.bundle.aux_names == ("dem", "lc") and every.bundle.config.n_aux == 4
    none = run_cli("train", ds, "-o", tmp_path / "none.geosr", "--no-aux", "--epochs", "1",
                   *FAST_CLI)
    assert none.exit_code == 0, none.output
    b = load_bundle(tmp_path / "none.geosr")
    assert b.aux_names == () and b.config.n_aux == 0
    assert Predictor(b).predict(coarse, None).shape == (1, 12, 12)


# --------------------------------------------------------------------------- pieces


def test_splits(tmp_path):
    ds = make_dataset(tmp_path, days=5)
    m = read_manifest(ds)
    s = make_split(m, val_fraction=0.4)
    assert s.kind is SplitKind.fraction and s.val_bands == (4, 5) and s.train_bands == (1, 2, 3)
    s = make_split(m, val_samples=("t2m_b002",))
    assert s.val_bands == (2,) and s.train_bands == (1, 3, 4, 5)
    s = make_split(m, val_block=0.25)
    assert s.kind is SplitKind.block and s.train_cols[1] == s.val_cols[0] and s.val_cols[1] == 12
    assert 2 <= 12 - s.val_cols[0] <= 4
    with pytest.raises(InputError, match="'t2m_b009'.*t2m_b001"):
        make_split(m, val_samples=("t2m_b009",))
    with pytest.raises(InputError, match="all 5"):
        make_split(m, val_samples=tuple(f"t2m_b00{i}" for i in range(1, 6)))
    with pytest.raises(InputError, match="--val-fraction 1.5"):
        make_split(m, val_fraction=1.5)
    one = make_dataset(tmp_path, name="one", days=1)
    assert make_split(read_manifest(one)).kind is SplitKind.block


def test_block_split_patches_never_touch_the_validation_block(tmp_path):
    ds = make_dataset(tmp_path, days=1)
    m = read_manifest(ds)
    split = make_split(m)
    plan = plan_patches(np.ones(m.coarse_grid.shape, bool), split, 3)
    assert (plan.starts[:, 2] + 3 <= split.val_cols[0]).all()
    with pytest.raises(InputError, match="--patch 40"):
        plan_patches(np.ones(m.coarse_grid.shape, bool), split, 40)


def test_recon_loss_ignores_nodata_and_gradient_term():
    pred = torch.zeros(1, 1, 4, 4)
    target = torch.zeros(1, 1, 4, 4)
    target[..., 0, 0] = 100.0
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 0, 0] = False
    for kind in Loss:
        assert float(recon_loss(pred, target, mask, kind, 1.0)) == 0.0
    target[..., 1, 1] = 1.0
    assert float(recon_loss(pred, target, mask, Loss.l1, 1.0)) == pytest.approx(1 / 15)
    assert float(recon_loss(pred, target, mask, Loss.mse, 1.0)) == pytest.approx(1 / 15)
    assert float(recon_loss(pred, target, mask, Loss.l1_grad, 1.0)) > 1 / 15


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_factor(s, 100, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:-1], lrs[10:], strict=True)) and lrs[-1] < 0.05


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("args, needle", [
    (["--aux", "ndvi"], "--aux 'ndvi'"),
    (["--val-samples", "t2m_b042"], "--val-samples 't2m_b042'"),
    (["--epochs", "0"], "--epochs 0"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--patch", "1"], "--patch 1"),
    (["--patch", "64"], "--patch 64"),
    (["--max-minutes", "-1"], "--max-minutes -1"),
    (["--val-fraction", "2"], "--val-fraction 2"),
    (["--arch", "fine_width=7"], "fine_width"),
    (["--no-aux", "--aux", "dem"], "--no-aux"),
])
def test_cli_bad_options_exit_2_one_line(tiny_dataset, tmp_path, args, needle):
    out = tmp_path / "m.geosr"
    res = run_cli("train", tiny_dataset, "-o", out, *FAST_CLI, *args)
    assert res.exit_code == 2, res.output
    assert needle in one_line_error(res)
    assert not out.exists() and not side_paths(out)[0].exists()


def test_cli_dataset_errors(tmp_path):
    # no target: an inference dataset
    from geosr.dataset.prepare import PrepareConfig, prepare
    from geosr.sources import LayerSpec

    src = make_scene(tmp_path / "src")
    infer = tmp_path / "infer"
    prepare(PrepareConfig(out_dir=infer, coarse=(str(src["target"]),),
                          aux=(LayerSpec("dem", str(src["dem"])),), res_m=250.0, factor=4))
    res = run_cli("train", infer, "-o", tmp_path / "m.geosr", *FAST_CLI)
    assert res.exit_code == 2 and "no target" in one_line_error(res)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "manifest.json").write_text("{not json")
    res = run_cli("train", damaged, "-o", tmp_path / "m.geosr", *FAST_CLI)
    assert res.exit_code == 2 and "manifest.json" in one_line_error(res)


def test_cli_output_exists_and_overwrite(tiny_dataset, tmp_path):
    out = tmp_path / "m.geosr"
    out.write_text("precious")
    res = run_cli("train", tiny_dataset, "-o", out, "--epochs", "1", *FAST_CLI)
    assert res.exit_code == 2 and "--overwrite" in one_line_error(res)
    assert out.read_text() == "precious"
    res = run_cli("train", tiny_dataset, "-o", out, "--epochs", "1", "--overwrite", *FAST_CLI)
    assert res.exit_code == 0, res.output
    assert load_bundle(out).training["epochs"] == 1


def test_cli_resume_corrupt_or_foreign_file(tiny_dataset, tmp_path, ):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00" * 100)
    res = run_cli("train", tiny_dataset, "-o", tmp_path / "m.geosr", "--resume", bad, *FAST_CLI)
    assert res.exit_code == 2 and "--resume" in one_line_error(res) and str(bad) in res.output
    missing = tmp_path / "missing.ckpt"
    res = run_cli("train", tiny_dataset, "-o", tmp_path / "m.geosr", "--resume", missing, *FAST_CLI)
    assert res.exit_code == 2 and "not found" in one_line_error(res)
    # a model bundle is not a checkpoint
    ok = tmp_path / "ok.geosr"
    assert run_cli("train", tiny_dataset, "-o", ok, "--epochs", "1", *FAST_CLI).exit_code == 0
    res = run_cli("train", tiny_dataset, "-o", tmp_path / "m.geosr", "--resume", ok, *FAST_CLI)
    assert res.exit_code == 2 and "not a geosr training checkpoint" in one_line_error(res)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cli_cuda_without_gpu(tiny_dataset, tmp_path):
    res = run_cli("train", tiny_dataset, "-o", tmp_path / "m.geosr", *FAST_CLI, "--device", "cuda")
    assert res.exit_code == 2 and "--device cuda" in one_line_error(res)


def test_torchrun_environment_is_read_by_the_cli_only(monkeypatch, tiny_dataset, tmp_path):
    import geosr.cli.train as cli_train

    seen = {}

    def fake_train(cfg, progress=None):
        seen["cfg"] = cfg
        raise InputError("stop here")

    monkeypatch.setattr(cli_train, "train", fake_train)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.5")
    monkeypatch.setenv("MASTER_PORT", "1234")
    res = run_cli("train", tiny_dataset, "-o", tmp_path / "m.geosr", "--aux", "dem",
                  "--val-samples", "t2m_b003", "t2m_b004", "--loss", "l1+grad", "--gan",
                  "--no-conserve", "--seed", "7", "--epochs", "3")
    assert res.exit_code == 2
    cfg = seen["cfg"]
    assert (cfg.dist.rank, cfg.dist.world_size, cfg.dist.local_rank) == (3, 4, 1)
    assert (cfg.dist.master_addr, cfg.dist.master_port) == ("10.0.0.5", 1234)
    assert cfg.aux == ("dem",) and cfg.val_samples == ("t2m_b003", "t2m_b004")
    assert cfg.loss is Loss.l1_grad and cfg.gan and not cfg.conserve and cfg.seed == 7
    assert cfg.epochs == 3


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_tiny_model_overfits_a_real_patch(tmp_path):
    """MeteoSwiss May 2023 mean temperature with the Swiss DEM: the loss falls >= 10x.

    The network starts at interpolation plus conservation (its residual design), so the
    first loss is already the bilinear error; 10x below it means it fits the sub-grid
    detail, not just the lapse rate (a linear DEM fit only halves it here).
    """
    if not REAL.is_dir():
        pytest.skip("../shared/data/real is not available")
    from rasterio.windows import Window

    from geosr.arrays import fill_nearest
    from geosr.dataset.prepare import PrepareConfig, prepare
    from geosr.model.bundle import AuxChannelSpec
    from geosr.model.predictor import encode_aux, encode_coarse
    from geosr.nn import Generator, NetConfig
    from geosr.sources import LayerSpec
    from geosr.training.data import Split
    from geosr.training.loop import _norm

    ch = REAL / "meteoswiss-ch-1km"
    ds = tmp_path / "ch"
    prepare(PrepareConfig(out_dir=ds, target=(str(next((ch / "geotiff").glob("TabsM_*.tif"))),),
                          aux=(LayerSpec("dem", str(ch / "aux" / "swissAltitude_geostatsp.tif")),),
                          res_m=1000.0, factor=8))
    m = read_manifest(ds)
    f, p = m.factor, 2
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with DatasetReader(m, ("dem",), (1,)) as rd:
        split = Split(SplitKind.block, (1,), (1,), (0, m.coarse_grid.width), (0, 0))
        plan = plan_patches(rd.coarse_valid_count((1,)) > 0, split, p)

        def relief(start):  # DEM spread of a fully valid patch (0 otherwise)
            _, r, c = start
            w = Window(c * f, r * f, p * f, p * f)
            return float(np.nanstd(rd.aux(w))) if np.isfinite(rd.target(1, w)).all() else 0.0

        alpine = int(np.argmax([relief(s) for s in plan.starts]))
        batch = read_batch(rd, plan, np.array([alpine]), f)
    norm = _norm([m])
    spec = (AuxChannelSpec("dem", mean=m.aux[0].stats.mean, std=m.aux[0].stats.std),)
    xc = encode_coarse(torch.from_numpy(fill_nearest(batch.coarse))[:, None], norm)
    xa = encode_aux(torch.from_numpy(batch.aux), spec)
    tgt = torch.from_numpy(batch.target)[:, None]
    mask = torch.isfinite(tgt)
    tgt = torch.nan_to_num((tgt - norm["target"]["mean"]) / norm["target"]["std"])
    # narrow coarse stages; the fine stage carries the sub-grid detail, so it gets the width
    net = Generator(NetConfig(factor=f, n_aux=1, coarse_width=8, branch_width=4, up_width=8,
                              fine_width=32, n_blocks=1, fine_blocks=3))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(500):
        loss = recon_loss(net(xc, xa), tgt, mask, Loss.l1, 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] / min(losses[-10:]) >= 10, (losses[0], min(losses[-10:]))


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tiny_dataset, tmp_path):
    """The same command under torchrun: DDP over gloo, rank 0 writes the outputs."""
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    out = tmp_path / "ddp.geosr"
    # --standalone: torchrun picks a free port itself (no race with other processes).
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "geosr",
           "train", str(tiny_dataset), "-o", str(out), "--epochs", "2", *FAST_CLI]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("wrote ") == 1  # only rank 0 reports and writes
    b = load_bundle(out)
    assert b.training["world_size"] == 2 and b.training["epochs"] == 2
    assert b.training["steps_per_epoch"] == 2  # 4 steps shared by 2 processes
