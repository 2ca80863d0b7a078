"""``geosr train`` on several prepared datasets at once (other regions, periods, grids)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _helpers_train import make_dataset
from test_train import FAST, FAST_CLI, one_line_error, run_cli

import geosr
from geosr.dataset.manifest import LayerStats, read_manifest
from geosr.model.bundle import load_bundle
from geosr.training.data import PatchPlan
from geosr.training.sources import Source, draw, pool_stats


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def two_regions(tmp_path):
    """Two tiny datasets on different grids and terrain (48 x 48 and 40 x 40 km)."""
    return (make_dataset(tmp_path, name="alpha", seed=0),
            make_dataset(tmp_path, name="beta", seed=1, size=40, days=3))


def test_pool_stats_match_the_union_of_the_cells():
    rng = np.random.default_rng(0)
    a, b = rng.normal(3, 2, 500), rng.normal(-1, 0.5, 120)

    def st(x, valid):
        return LayerStats(float(x.mean()), float(x.std()), float(x.min()), float(x.max()),
                          x.size, valid)

    both = np.concatenate([a, b])
    p = pool_stats([st(a, 1.0), st(b, 0.5)])
    assert p.mean == pytest.approx(both.mean()) and p.std == pytest.approx(both.std())
    assert (p.min, p.max, p.count) == (both.min(), both.max(), 620)
    assert p.valid_fraction == pytest.approx(620 / (500 + 240))
    assert pool_stats([st(a, 1.0)]) == st(a, 1.0) and pool_stats([None]) is None


def test_draw_shares_batches_between_datasets_and_keeps_single_runs():
    plans = [Source(None, None, None, plan=PatchPlan(4, np.zeros((n, 3), np.int64), n))
             for n in (1000, 10)]
    counts = np.zeros(2)
    rng = np.random.default_rng(0)
    for _ in range(200):
        for i, picks in draw(rng, plans, 16):
            counts[i] += len(picks)
            assert picks.max() < len(plans[i].plan.starts)
    assert counts.sum() == 3200 and abs(counts[0] / counts.sum() - 0.5) < 0.03  # equal shares
    # one dataset: exactly the draws of a single-dataset run
    one = draw(np.random.default_rng(7), plans[:1], 16)
    assert len(one) == 1 and np.array_equal(
        one[0][1], np.random.default_rng(7).integers(0, 1000, size=16))


def test_two_datasets_train_one_model_validated_on_both(two_regions, tmp_path):
    a, b = two_regions
    kw = dict(epochs=1, seed=0, **FAST)
    ra = geosr.train(a, out=tmp_path / "a.geosr", **kw)
    rb = geosr.train(b, out=tmp_path / "b.geosr", **kw)
    rab = geosr.train([a, b], out=tmp_path / "ab.geosr", **kw)
    # every held-out pixel of both datasets is scored, and each one's error is reported
    assert rab.best["n"] == ra.best["n"] + rb.best["n"] > ra.best["n"]
    per = rab.best["rmse_by_dataset"]
    assert list(per) == ["alpha", "beta"]
    pooled = np.sqrt((per["alpha"] ** 2 * ra.best["n"] + per["beta"] ** 2 * rb.best["n"])
                     / rab.best["n"])
    assert rab.best["rmse"] == pytest.approx(pooled, rel=1e-9)
    assert rab.history[-1]["val_rmse_by_dataset"] == per
    assert "rmse_by_dataset" not in ra.best
    bundle = load_bundle(tmp_path / "ab.geosr")
    t = bundle.training
    assert t["datasets"] == [str(a), str(b)] and len(t["splits"]) == 2
    assert t["scene_ranges"]["n"] == (len(t["splits"][0]["train_samples"])
                                      + len(t["splits"][1]["train_samples"]))
    # one normalisation for both: the pooled statistics of the two coarse layers
    ma, mb = read_manifest(a), read_manifest(b)
    pooled = pool_stats([ma.coarse.stats, mb.coarse.stats])
    assert bundle.norm["coarse"]["mean"] == pytest.approx(pooled.mean)
    assert bundle.norm["coarse"]["std"] == pytest.approx(pooled.std)
    assert ma.coarse.stats.mean != pytest.approx(pooled.mean)
    dem = [s for s in bundle.aux if s.name == "dem"][0]
    assert dem.mean == pytest.approx(pool_stats([ma.aux_layer("dem").stats,
                                                 mb.aux_layer("dem").stats]).mean)
    lo, hi = t["aux_ranges"]["dem"]
    assert lo == min(ma.aux_layer("dem").stats.min, mb.aux_layer("dem").stats.min)
    assert hi == max(ma.aux_layer("dem").stats.max, mb.aux_layer("dem").stats.max)
    # the single-dataset bundles record no list of datasets
    assert "datasets" not in load_bundle(tmp_path / "a.geosr").training


def test_cli_two_datasets_and_val_samples_in_one_of_them(two_regions, tmp_path):
    a, b = two_regions
    out = tmp_path / "m.geosr"
    last = read_manifest(a).samples[-1].id  # day 4: not in beta's three days
    assert last not in {s.id for s in read_manifest(b).samples}
    res = run_cli("train", a, b, "-o", tmp_path / "h.geosr", "--epochs", "1", *FAST_CLI)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # the console wraps long lines
    assert "val RMSE" in text and "(alpha " in text and ", beta " in text, text
    res = run_cli("train", a, b, "-o", out, "--epochs", "1", "--val-samples", last,
                  "--json", *FAST_CLI)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["split"].startswith("2 datasets: alpha:") and "beta:" in summary["split"]
    splits = load_bundle(out).training["splits"]
    assert splits[0]["val_samples"] == [last] and splits[1]["val_samples"] == []
    res = run_cli("train", a, b, "-o", tmp_path / "n.geosr", "--val-samples", "nope",
                  *FAST_CLI)
    assert res.exit_code == 2 and "--val-samples 'nope'" in one_line_error(res)


def _edit_manifest(folder, **changes):
    path = folder / "manifest.json"
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("case, needle", [
    ("factor", "factor 2, but"),
    ("twice", "given twice"),
    ("units", "units 'K', but"),
    ("aux", "has no aux layer 'dem'"),
])
def test_cli_incompatible_datasets_exit_2_one_line(tmp_path, case, needle):
    a = make_dataset(tmp_path, name="alpha")
    if case == "factor":
        b = make_dataset(tmp_path, name="beta", factor=2)
    elif case == "twice":
        b = a
    else:
        b = make_dataset(tmp_path, name="beta", seed=1)
        if case == "units":
            _edit_manifest(a, units="degC")
            _edit_manifest(b, units="K")
        else:
            d = json.loads((b / "manifest.json").read_text())
            for layer in d["aux"]:
                layer["name"] = "elev"
            (b / "manifest.json").write_text(json.dumps(d))
    out = tmp_path / "m.geosr"
    res = run_cli("train", a, b, "-o", out, *FAST_CLI)
    assert res.exit_code == 2, res.output
    line = one_line_error(res)
    assert needle in line and ("beta" in line or case == "twice"), line
    assert not out.exists()


def test_two_dataset_run_resumes_to_the_same_weights_and_refuses_other_datasets(
        two_regions, tmp_path):
    from geosr.errors import BundleError
    from geosr.training.config import TrainConfig, side_paths
    from geosr.training.loop import train

    a, b = two_regions
    full = train(TrainConfig(dataset=a, more_datasets=(b,), out=tmp_path / "full.geosr",
                             epochs=3, **FAST))

    def interrupt(ev):
        if ev.kind == "epoch" and ev.epoch == 1:
            raise KeyboardInterrupt

    cfg = TrainConfig(dataset=a, more_datasets=(b,), out=tmp_path / "part.geosr", epochs=3,
                      **FAST)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=interrupt)
    ckpt = side_paths(cfg.out)[0]
    other = make_dataset(tmp_path, name="gamma", seed=2, size=40, days=3)
    with pytest.raises(BundleError, match="the datasets"):
        train(TrainConfig(**{**cfg.__dict__, "more_datasets": (other,), "resume": ckpt}))
    resumed = train(TrainConfig(**{**cfg.__dict__, "resume": ckpt}))
    assert resumed.bundle.sha256 == full.bundle.sha256


def test_two_datasets_probabilistic_calibrates_on_both(two_regions, tmp_path):
    a, b = two_regions
    kw = dict(epochs=1, seed=0, probabilistic=True, **FAST)
    ra = geosr.train(a, out=tmp_path / "a.geosr", **kw)
    rb = geosr.train(b, out=tmp_path / "b.geosr", **kw)
    rab = geosr.train([a, b], out=tmp_path / "ab.geosr", **kw)
    cal = [r.bundle.training["spread_calibration"] for r in (ra, rb, rab)]
    assert cal[2]["n"] == cal[0]["n"] + cal[1]["n"] > 0
    assert 0.85 <= cal[2]["coverage"] <= 0.95
