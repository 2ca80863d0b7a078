"""Model bundles: round trip, safe loading, damaged files, model lookup, the Predictor."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import geosr.model.predictor as gp
import geosr.model.registry as registry
from geosr.cli import app
from geosr.errors import BundleError, InputError, OutputExistsError
from geosr.model.bundle import BUNDLE_FORMAT_VERSION, AuxChannelSpec, load_bundle, save_bundle
from geosr.model.predictor import Predictor, encode_aux
from geosr.model.registry import resolve_model
from geosr.nn import Generator, NetConfig

F = 4
AUX = (AuxChannelSpec("dem", mean=1000.0, std=500.0, units="m"),
       AuxChannelSpec("lc", categorical=True, classes=(1.0, 2.0, 5.0)))
NORM = {"coarse": {"mean": 10.0, "std": 5.0}, "target": {"mean": 10.0, "std": 5.0}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**kw) -> NetConfig:
    base = dict(factor=F, n_aux=4, coarse_width=8, branch_width=4, up_width=8, fine_width=8,
                n_blocks=1, fine_blocks=1)
    return NetConfig(**{**base, **kw})


def write_bundle(path, *, seed=0, config=None, **kw):
    torch.manual_seed(seed)
    config = config or tiny_config()
    model = Generator(config)
    with torch.no_grad():  # make the head matter, so predictions differ from interpolation
        model.head[-1].weight.mul_(10)
    fields = dict(config=config, aux=AUX, factor=F, res_m=500.0, variable="t2m", units="degC",
                  norm=NORM, training={"epochs": 3, "val": {"rmse": 0.5}},
                  state_dict=model.state_dict())
    fields.update(kw)
    return save_bundle(path, overwrite=True, **fields), model


@pytest.fixture
def bundle_path(tmp_path):
    path = tmp_path / "m.geosr"
    write_bundle(path)
    return path


def inputs(n=2, h=5, w=6, seed=1):
    rng = np.random.default_rng(seed)
    coarse = (10 + 3 * rng.normal(size=(n, h, w))).astype(np.float32)
    dem = 1000 + 400 * rng.normal(size=(n, 1, h * F, w * F))
    lc = rng.choice([1.0, 2.0, 5.0], size=(n, 1, h * F, w * F))
    return coarse, np.concatenate([dem, lc], axis=1).astype(np.float32)


# --------------------------------------------------------------------------- round trip


def test_round_trip_keeps_everything(tmp_path):
    saved, model = write_bundle(tmp_path / "m.geosr")
    loaded = load_bundle(tmp_path / "m.geosr")
    assert loaded.config == saved.config
    assert loaded.aux == AUX and loaded.aux_names == ("dem", "lc")
    assert loaded.channels == ["dem", "lc=1", "lc=2", "lc=5"]
    assert (loaded.factor, loaded.res_m, loaded.variable, loaded.units) == (F, 500.0, "t2m", "degC")
    assert loaded.norm == NORM and loaded.training["val"]["rmse"] == 0.5
    assert loaded.sha256 == saved.sha256 and len(loaded.sha256) == 64
    assert loaded.geosr_version and loaded.halo_coarse >= 1
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict[k], v)
    rebuilt = loaded.build_model()
    assert not rebuilt.training
    x, a = torch.randn(1, 1, 3, 3), torch.randn(1, 4, 3 * F, 3 * F)
    model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x, a), model(x, a))


def test_hash_depends_on_weights_and_norm_not_on_training_summary(tmp_path):
    a, _ = write_bundle(tmp_path / "a.geosr", seed=0)
    b, _ = write_bundle(tmp_path / "b.geosr", seed=0, training={"epochs": 99})
    c, _ = write_bundle(tmp_path / "c.geosr", seed=1)
    unit = {"mean": 0.0, "std": 1.0}
    d, _ = write_bundle(tmp_path / "d.geosr", seed=0, norm={"coarse": unit, "target": unit})
    assert a.sha256 == b.sha256
    assert len({a.sha256, c.sha256, d.sha256}) == 3


def as_hash_v1(path, dst, edit=lambda meta: None):
    """Rewrite a bundle as an older geosr wrote it: no ``hash_version``, and the content
    hash over the weights, config, aux, factor, res_m and norm only."""
    from geosr.model.bundle import content_hash

    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta"])
    meta.pop("hash_version")
    edit(meta)
    meta["sha256"] = content_hash(payload["state_dict"], {
        k: meta[k] for k in ("config", "aux", "factor", "res_m", "norm")})
    payload["meta"] = json.dumps(meta)
    torch.save(payload, dst)
    return meta["sha256"]


def test_coarse_training_range_units_and_valid_range_are_hashed(tmp_path):
    stats = {"min": -3.0, "max": 21.0, "mean": 10.0, "std": 5.0}
    a, _ = write_bundle(tmp_path / "a.geosr", coarse_stats=stats, units="K")
    b, _ = write_bundle(tmp_path / "b.geosr")
    loaded = load_bundle(tmp_path / "a.geosr")
    assert loaded.coarse_stats == stats and loaded.units == "K" and loaded.hash_version == 2
    assert loaded.training_range().describe() == "-3..21"
    assert a.sha256 != b.sha256  # units and the input range change outputs: hashed
    again = save_bundle(tmp_path / "c.geosr", loaded)
    assert again.coarse_stats == stats and again.sha256 == a.sha256  # re-save keeps both
    # a bundle from before the range was recorded: the normalisation mean and std
    sha = as_hash_v1(tmp_path / "b.geosr", tmp_path / "old.geosr",
                     lambda meta: meta.pop("coarse_stats"))
    old = load_bundle(tmp_path / "old.geosr")
    assert old.coarse_stats == {} and old.sha256 == sha and old.hash_version == 1
    assert old.training_range().describe("degC") == "mean 10 +- 5 degC"
    # re-saving an older bundle writes the current hash over all of it
    resaved = save_bundle(tmp_path / "new.geosr", old)
    assert resaved.hash_version == 2 and load_bundle(tmp_path / "new.geosr").sha256 == \
        resaved.sha256 != sha


def _shape(v):
    if isinstance(v, dict):
        return {k: _shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_shape(x) for x in v]
    return type(v)


def _flip_bit(value):
    """``value`` with one bit changed in its JSON text: the first letter or digit of a
    value (not a key) that turns into another letter or digit."""
    text = json.dumps(value)
    for i, ch in enumerate(text):
        for bit in range(7):
            new = chr(ord(ch) ^ (1 << bit))
            if not (ch.isalnum() and new.isalnum()):
                continue
            try:
                out = json.loads(text[:i] + new + text[i + 1:])
            except ValueError:
                continue
            if out != value and _shape(out) == _shape(value):
                return out
    raise AssertionError(f"no one-bit change of {text}")


HASHED = ["config", "aux", "factor", "res_m", "norm", "variable", "units", "channels",
          "halo_coarse", "decode_halo", "halo_method", "coarse_stats", "valid_range",
          "hash_version", "kind"]


@pytest.fixture(scope="module")
def full_bundle(tmp_path_factory):
    """A bundle with every optional field filled in."""
    from geosr.constraints import ValidRange

    path = tmp_path_factory.mktemp("full") / "m.geosr"
    write_bundle(path, coarse_stats={"min": -3.0, "max": 21.0, "mean": 10.0, "std": 5.0},
                 valid_range=ValidRange(-90.0, 60.0))
    return path


@pytest.mark.parametrize("key", HASHED)
def test_one_bit_in_any_hashed_field_is_refused(tmp_path, full_bundle, key):
    from geosr.model.bundle import UNHASHED_FIELDS

    path = tmp_path / "m.geosr"
    payload = torch.load(full_bundle, weights_only=True)
    meta = json.loads(payload["meta"])
    # the list above is every field but the descriptive ones: a new field is hashed too
    assert set(meta) - UNHASHED_FIELDS == set(HASHED)
    meta[key] = _flip_bit(meta[key])
    payload["meta"] = json.dumps(meta)
    torch.save(payload, path)
    with pytest.raises(BundleError) as e:
        load_bundle(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    assert "hash" in msg


def test_descriptive_fields_are_outside_the_hash(tmp_path, full_bundle):
    path = tmp_path / "m.geosr"
    payload = torch.load(full_bundle, weights_only=True)
    meta = json.loads(payload["meta"])
    meta["training"]["epochs"] = 4
    meta["geosr_version"] = "0.0.1"
    payload["meta"] = json.dumps(meta)
    torch.save(payload, path)
    assert load_bundle(path).training["epochs"] == 4


def test_newer_hash_version_asks_for_upgrade(bundle_path):
    def mutate(p):
        meta = json.loads(p["meta"])
        meta["hash_version"] = 3
        p["meta"] = json.dumps(meta)

    _rewrite(bundle_path, mutate)
    with pytest.raises(BundleError, match=r"hash version 3 .*upgrade geosr"):
        load_bundle(bundle_path)


def test_shipped_model_records_its_units():
    path = Path(__file__).resolve().parents[1] / "models" / "alps-t2m" / "alps-t2m.geosr"
    if not path.is_file():
        pytest.skip("models/alps-t2m is not in this checkout")
    b = load_bundle(path)
    assert b.units == "degC" and b.sha256.startswith("1436a9322186") and b.hash_version == 2
    rng = b.training_range()
    assert rng.min < 0 < rng.max < 25


def test_save_refuses_existing_file_without_overwrite(bundle_path):
    b = load_bundle(bundle_path)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        save_bundle(bundle_path, b)
    again = save_bundle(bundle_path, b, overwrite=True)
    assert again.sha256 == b.sha256
    assert [p.name for p in bundle_path.parent.iterdir()] == ["m.geosr"]  # no temp files left


# --------------------------------------------------------------------------- safe loading


class _Evil:
    """Unpickling this would create a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_inside_a_torch_archive_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.geosr"
    torch.save({"format": "geosr-bundle", "format_version": 1, "meta": "{}",
                "state_dict": {"w": torch.zeros(1)}, "x": _Evil(marker)}, path)
    with pytest.raises(BundleError, match="refused") as e:
        load_bundle(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_raw_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.geosr"
    path.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}))
    with pytest.raises(BundleError, match="refused"):
        load_bundle(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "empty", "text", "zip", "folder", "missing"])
def test_damaged_or_foreign_files_give_one_line_errors(bundle_path, tmp_path, damage):
    path = tmp_path / "bad.geosr"
    if damage == "truncate":
        path.write_bytes(bundle_path.read_bytes()[: bundle_path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("just some text\n")
    elif damage == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("hello.txt", "not a model")
    elif damage == "folder":
        path.mkdir()
    with pytest.raises(BundleError) as e:
        load_bundle(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    assert "expected" in msg


@pytest.mark.parametrize("where", ["local-header", "local-header-name", "central-directory",
                                   "data", "truncated"])
def test_damaged_zip_header_is_reported_as_damage(full_bundle, tmp_path, where):
    """Not as "holds Python objects ... could run code": torch's reader misreads a
    damaged header and then fails to unpickle."""
    data = bytearray(full_bundle.read_bytes())
    cd = bytes(data).find(b"PK\x01\x02")
    if where == "truncated":
        data = data[: cd + 10]
    else:
        off = {"local-header": 1, "local-header-name": 30, "central-directory": cd,
               "data": bytes(data).find(b'"factor"') + 10}[where]
        data[off] ^= 0x01
    path = tmp_path / "bad.geosr"
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        load_bundle(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    assert "not a valid model bundle" in msg and "could run code" not in msg


def _rewrite(path, mutate):
    payload = torch.load(path, weights_only=True)
    mutate(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    path.write_bytes(buf.getvalue())


def test_other_format_version_is_refused(bundle_path):
    _rewrite(bundle_path, lambda p: p.update(format_version=BUNDLE_FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match=r"format version 2 .*expected version 1"):
        load_bundle(bundle_path)


def test_not_a_bundle_dictionary_is_refused(bundle_path):
    _rewrite(bundle_path, lambda p: p.update(format="something-else"))
    with pytest.raises(BundleError, match="not a geosr model bundle"):
        load_bundle(bundle_path)


def test_tampered_weights_fail_the_hash(bundle_path):
    def mutate(p):
        k = next(iter(p["state_dict"]))
        p["state_dict"][k] = p["state_dict"][k] + 1

    _rewrite(bundle_path, mutate)
    with pytest.raises(BundleError, match="hash"):
        load_bundle(bundle_path)


def test_damaged_metadata_is_one_line(bundle_path):
    def mutate(p):
        meta = json.loads(p["meta"])
        del meta["factor"]
        p["meta"] = json.dumps(meta)

    _rewrite(bundle_path, mutate)
    with pytest.raises(BundleError, match="metadata is damaged"):
        load_bundle(bundle_path)


def test_unknown_architecture_field_asks_for_upgrade(bundle_path):
    def mutate(p):
        meta = json.loads(p["meta"])
        meta["config"]["wings"] = 2
        p["meta"] = json.dumps(meta)

    _rewrite(bundle_path, mutate)
    with pytest.raises(BundleError, match="wings"):
        load_bundle(bundle_path)


def test_bundle_from_before_aux_gain_loads_without_it(tmp_path):
    """A bundle written before ``aux_gain`` existed stores no such field and was hashed
    without it; it loads with the gain path off, as it was trained, and passes its hash."""
    from geosr.model.bundle import content_hash

    saved, model = write_bundle(tmp_path / "new.geosr", config=tiny_config(aux_gain=False))
    payload = torch.load(tmp_path / "new.geosr", weights_only=True)
    meta = json.loads(payload["meta"])
    del meta["config"]["aux_gain"]
    del meta["hash_version"]
    meta["sha256"] = content_hash(payload["state_dict"], {
        k: meta[k] for k in ("config", "aux", "factor", "res_m", "norm")})
    payload["meta"] = json.dumps(meta)
    torch.save(payload, tmp_path / "old.geosr")

    old = load_bundle(tmp_path / "old.geosr")
    assert old.config.aux_gain is False and old.config == saved.config
    assert old.sha256 == meta["sha256"]
    x, a = torch.randn(1, 1, 3, 3), torch.randn(1, 4, 3 * F, 3 * F)
    model.eval()
    with torch.no_grad():
        assert torch.equal(old.build_model()(x, a), model(x, a))


def test_cli_corrupt_model_exits_2_with_one_line(tmp_path):
    from conftest import write_raster

    coarse = write_raster(tmp_path / "c.tif", np.full((4, 4), 10.0, np.float32), res=2000.0)
    dem = write_raster(tmp_path / "dem.tif", np.full((16, 16), 500.0, np.float32), res=500.0)
    bad = tmp_path / "bad.geosr"
    bad.write_bytes(b"PK\x03\x04 damaged")
    res = CliRunner().invoke(app, ["downscale", str(coarse), "--aux", f"dem={dem}", "--model",
                                   str(bad), "-o", str(tmp_path / "out.tif")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(bad) in lines[0]
    assert not (tmp_path / "out.tif").exists()


# --------------------------------------------------------------------------- lookup


def test_resolve_model_by_path_and_shipped_name(tmp_path, monkeypatch, bundle_path):
    assert resolve_model(str(bundle_path)) == bundle_path
    shipped = tmp_path / "shipped"
    (shipped / "alps-t2m").mkdir(parents=True)
    (shipped / "alps-t2m" / "alps-t2m.geosr").write_bytes(bundle_path.read_bytes())
    (shipped / "uk-tmax.geosr").write_bytes(bundle_path.read_bytes())
    monkeypatch.setattr(registry, "shipped_model_dirs", lambda: [shipped])
    assert resolve_model("alps-t2m") == shipped / "alps-t2m" / "alps-t2m.geosr"
    assert resolve_model("uk-tmax") == shipped / "uk-tmax.geosr"
    with pytest.raises(BundleError, match=r"'nope'.*alps-t2m, uk-tmax"):
        resolve_model("nope")


def test_shipped_model_dirs_exist():
    assert all(d.is_dir() for d in registry.shipped_model_dirs())


# --------------------------------------------------------------------------- predictor


def test_predictor_shapes_nodata_and_conservation(bundle_path):
    b = load_bundle(bundle_path)
    p = Predictor(b)
    assert p.factor == F and p.aux_names == ("dem", "lc") and p.halo_coarse >= 1
    coarse, aux = inputs()
    coarse[0, 1, 2] = np.nan
    aux[1, 0, :3, :3] = np.nan
    out = p.predict(coarse, aux)
    assert out.shape == (2, 5 * F, 6 * F) and out.dtype == np.float32
    block = out[0, F:2 * F, 2 * F:3 * F]
    assert np.isnan(block).all()
    assert np.isfinite(np.delete(out[0].reshape(-1), np.flatnonzero(np.isnan(out[0])))).all()
    assert np.isfinite(out[1]).all()
    means = out.reshape(2, 5, F, 6, F).mean(axis=(2, 4))
    ok = np.isfinite(coarse)
    np.testing.assert_allclose(means[ok], coarse[ok], atol=1e-4)
    # not just interpolation: the aux drive sub-grid detail
    assert float(np.nanstd(out[1] - np.repeat(np.repeat(coarse[1], F, 0), F, 1))) > 1e-3


def test_predictor_conserve_override(bundle_path):
    b = load_bundle(bundle_path)
    coarse, aux = inputs(n=1)
    off = Predictor(b, conserve=False).predict(coarse, aux)
    on = Predictor(b, conserve=None).predict(coarse, aux)
    assert Predictor(b, conserve=False).conserve is False
    means = off.reshape(1, 5, F, 6, F).mean(axis=(2, 4))
    assert np.abs(means - coarse).max() > 1e-3
    assert not np.allclose(off, on)


def test_predictor_batches_large_inputs(bundle_path, monkeypatch):
    b = load_bundle(bundle_path)
    coarse, aux = inputs(n=5)
    whole = Predictor(b).predict(coarse, aux)
    monkeypatch.setattr(gp, "MAX_PREDICT_PX", 1)  # one sample per forward pass
    np.testing.assert_allclose(Predictor(b).predict(coarse, aux), whole, atol=1e-5)


@pytest.mark.parametrize("bad", ["missing", "one_layer", "three_layers", "wrong_size"])
def test_predictor_refuses_wrong_aux(bundle_path, bad):
    p = Predictor(load_bundle(bundle_path))
    coarse, aux = inputs(n=1)
    arg = {"missing": None, "one_layer": aux[:, :1],
           "three_layers": np.concatenate([aux, aux[:, :1]], axis=1),
           "wrong_size": aux[:, :, :-F]}[bad]
    with pytest.raises(BundleError, match=r"dem, lc"):
        p.predict(coarse, arg)


def test_encode_aux_one_hot_and_standardise():
    aux = torch.tensor([[[[1500.0, np.nan]], [[2.0, 7.0]]]])  # (1, 2, 1, 2)
    enc = encode_aux(aux, AUX)
    assert enc.shape == (1, 4, 1, 2)
    np.testing.assert_allclose(enc[0, 0, 0].numpy(), [1.0, 0.0])  # (1500-1000)/500; NaN -> 0
    np.testing.assert_allclose(enc[0, 1:, 0, 0].numpy(), [0, 1, 0])  # class 2
    np.testing.assert_allclose(enc[0, 1:, 0, 1].numpy(), [0, 0, 0])  # unknown class 7


def test_halo_is_measured_by_cropping_and_remeasured_for_older_bundles(tmp_path, monkeypatch):
    """The stored halo reproduces whole-window output; an older measurement is redone."""
    saved, model = write_bundle(tmp_path / "m.geosr")
    model.eval()
    h = saved.halo_coarse
    assert 1 <= h <= gp.full_halo(model)
    # Crops with the stored halo reproduce the core of a wide window (the tolerance is
    # relative to the output's std).
    g = torch.Generator().manual_seed(5)
    n, core = 2 * h + 8, 2
    coarse = torch.randn(1, 1, n, n, generator=g)
    aux = torch.randn(1, model.cfg.n_aux, n * F, n * F, generator=g)
    with torch.no_grad():
        full = model(coarse, aux)
        lo, hi = n // 2 - core // 2 - h, n // 2 + core // 2 + h
        crop = model(coarse[..., lo:hi, lo:hi], aux[..., lo * F:hi * F, lo * F:hi * F])
    ref = full[..., (lo + h) * F:(hi - h) * F, (lo + h) * F:(hi - h) * F]
    got = crop[..., h * F:(hi - lo - h) * F, h * F:(hi - lo - h) * F]
    assert float((got - ref).abs().max()) <= 0.05 * float(full.std())
    # A bundle from before the crop measurement: its halo is measured again on load.
    def older(meta):
        meta.pop("halo_method")
        meta["halo_coarse"] = 1

    as_hash_v1(tmp_path / "m.geosr", tmp_path / "old.geosr", older)
    old = load_bundle(tmp_path / "old.geosr")
    assert old.halo_coarse == 0 and old.decode_halo == 0
    p = gp.Predictor(old)
    assert p.halo_coarse == h and p.decode_halo == saved.decode_halo >= 1


def test_predict_with_context_margin_matches_the_whole_window(tmp_path):
    """``margin``: the encoder sees the context, the decoder only the inner region."""
    saved, _ = write_bundle(tmp_path / "m.geosr")
    p = gp.Predictor(load_bundle(tmp_path / "m.geosr"))
    assert 1 <= p.decode_halo <= gp.full_halo(p.model)
    rng = np.random.default_rng(3)
    h = w = 4 * p.halo_coarse + 6
    coarse = rng.normal(10, 3, (2, h, w)).astype(np.float32)
    dem = rng.normal(500, 100, (2, 1, h * F, w * F))
    lc = rng.choice([1.0, 2.0, 5.0], (2, 1, h * F, w * F))  # AUX: dem, lc (classes 1, 2, 5)
    aux = np.concatenate([dem, lc], axis=1).astype(np.float32)
    m = (p.halo_coarse, p.halo_coarse + 1, p.halo_coarse, 0)
    whole = p.predict(coarse, aux)
    part = p.predict(coarse, aux, margin=m)
    ref = whole[:, m[0] * F:(h - m[2]) * F, m[1] * F:(w - m[3]) * F]
    assert part.shape == ref.shape
    # The inner region, away from its own edges, equals the whole-window prediction.
    k = p.halo_coarse * F
    inner = (slice(None), slice(k, -k), slice(k, -k))
    assert np.abs(part[inner] - ref[inner]).max() <= 1e-3 * whole.std()
    with pytest.raises(InputError, match="margin"):
        p.predict(coarse, aux, margin=(h, 0, 0, 0))
