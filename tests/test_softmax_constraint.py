"""The softmax constraint layer and the non-negative (``positive``) network: never below
zero, every coarse cell exact, dry cells dry, local (tiles), with masks and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geosr.nn import Generator, NetConfig
from geosr.nn.conservation import SoftmaxConservation, conserve_softmax

TINY = dict(coarse_width=8, branch_width=4, up_width=8, fine_width=8, n_blocks=1)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _block_mean64(x: torch.Tensor, f: int) -> torch.Tensor:
    n, c, hf, wf = x.shape
    return x.double().reshape(n, c, hf // f, f, wf // f, f).mean(dim=(3, 5))


def _rain(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 1, h, w, generator=g) * 20
    c[torch.rand(n, 1, h, w, generator=g) < 0.3] = 0.0  # dry cells
    return c


@settings(max_examples=30, deadline=None)
@given(f=st.integers(1, 7), h=st.integers(1, 3), w=st.integers(1, 3), seed=st.integers(0, 99))
def test_softmax_conservation_is_non_negative_and_exact(f, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, h * f, w * f, generator=g) * 5
    coarse = _rain(2, h, w, seed)
    out = conserve_softmax(logits, coarse, f)
    assert (out >= 0).all()
    torch.testing.assert_close(_block_mean64(out, f), coarse.double(), rtol=1e-5, atol=1e-6)
    up = coarse.repeat_interleave(f, -2).repeat_interleave(f, -1)
    assert (out[up == 0] == 0).all()  # dry cells stay dry


def test_softmax_conservation_shares_by_the_weights():
    logits = torch.log(torch.tensor([[[[1.0, 3.0], [0.0 + 1e-30, 4.0]]]]))
    out = conserve_softmax(logits, torch.tensor([[[[2.0]]]]), 2)
    torch.testing.assert_close(out, torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]]]))


def test_softmax_conservation_with_a_mask():
    f = 4
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 1, 3 * f, 3 * f, generator=g)
    coarse = _rain(1, 3, 3, 5) + 1.0
    mask = torch.rand(1, 1, 3 * f, 3 * f, generator=g) > 0.4
    mask[..., :f, :f] = False  # a block without any valid cell
    out = conserve_softmax(logits, coarse, f, valid_mask=mask)
    assert torch.isfinite(out).all() and (out >= 0).all()
    m = mask.double()
    has = _block_mean64(m, f) > 0
    masked = _block_mean64(out * m, f) / _block_mean64(m, f).clamp_min(1e-12)
    torch.testing.assert_close(masked[has], coarse.double()[has], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[..., :f, :f], coarse[..., :1, :1].expand(1, 1, f, f))
    # invalid cells of a valid block hold the coarse value, not a share
    inv = ~mask[..., f:, f:]
    up = coarse.repeat_interleave(f, -2).repeat_interleave(f, -1)[..., f:, f:]
    torch.testing.assert_close(out[..., f:, f:][inv], up[inv])


def test_softmax_conservation_gradient_is_finite():
    logits = torch.randn(1, 1, 4, 4, requires_grad=True)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1
    coarse = torch.tensor([[[[1.0, float("nan")], [0.0, 2.0]]]])
    out = conserve_softmax(logits, coarse, 2, valid_mask=mask)
    assert torch.isfinite(out).all()
    (out * torch.arange(16.0).view(1, 1, 4, 4)).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_softmax_conservation_validation():
    with pytest.raises(ValueError, match="coarse: expected shape"):
        conserve_softmax(torch.zeros(1, 1, 6, 6), torch.zeros(1, 1, 2, 3), 3)
    with pytest.raises(ValueError, match="factor"):
        SoftmaxConservation(0)


@pytest.mark.parametrize("factor", [3, 8, 20])
def test_positive_generator_is_non_negative_and_conserving(factor):
    net = Generator(NetConfig(factor=factor, n_aux=1, positive=True, **TINY)).eval()
    g = torch.Generator().manual_seed(factor)
    coarse = _rain(2, 3, 4, factor) / 5  # the network sees rain scaled by its std
    aux = torch.randn(2, 1, 3 * factor, 4 * factor, generator=g)
    with torch.no_grad():
        net.gain.weight.normal_(0.0, 2.0)  # a strong multiplicative DEM pattern
        out = net(coarse, aux)
    assert (out >= 0).all()
    torch.testing.assert_close(_block_mean64(out, factor), coarse.double(), rtol=1e-5,
                               atol=1e-6)
    up = coarse.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    assert (out[up == 0] == 0).all()
    assert out[up > 0].std() > 0  # not a flat fill


def test_positive_generator_without_conservation_is_non_negative():
    net = Generator(NetConfig(factor=4, n_aux=1, positive=True, conserve=False, **TINY)).eval()
    coarse = _rain(1, 3, 3, 2)
    with torch.no_grad():
        out = net(coarse, torch.randn(1, 1, 12, 12))
    assert (out >= 0).all() and (_block_mean64(out, 4) - coarse.double()).abs().max() > 1e-4


def test_positive_generator_halo_bounds_the_receptive_field():
    f = 3
    net = Generator(NetConfig(factor=f, n_aux=1, positive=True, **TINY)).double().eval()
    n = 2 * math.ceil(net.halo_px / f) + 5
    coarse = (torch.rand(1, 1, n, n, dtype=torch.float64) + 0.5).requires_grad_(True)
    aux = torch.randn(1, 1, n * f, n * f, dtype=torch.float64, requires_grad=True)
    y = x = (n // 2) * f + 1
    net(coarse, aux)[0, 0, y, x].backward()
    rows, cols = (coarse.grad[0, 0] != 0).nonzero(as_tuple=True)
    reach_cells = max((rows - y // f).abs().max().item(), (cols - x // f).abs().max().item())
    assert (reach_cells + 1) * f <= net.halo_px
    feats = net.encode(coarse.detach(), net.pool_aux(aux.detach()))
    c2 = coarse.detach().clone().requires_grad_(True)
    net.decode(feats, c2, aux.detach())[0, 0, y, x].backward()
    rows, cols = (c2.grad[0, 0] != 0).nonzero(as_tuple=True)
    reach_cells = max((rows - y // f).abs().max().item(), (cols - x // f).abs().max().item())
    assert (reach_cells + 1) * f <= net.decode_halo_px  # bicubic base: +-2 cells


def test_positive_is_not_scene_adaptive():
    with pytest.raises(ValueError, match="positive"):
        NetConfig(factor=4, positive=True, scene=True)
    cfg = NetConfig(factor=4, positive=True)
    assert NetConfig.from_dict(cfg.to_dict()) == cfg
    assert NetConfig.from_dict({"factor": 4}).positive is False  # bundles before the option


def test_rain_trains_the_non_negative_network_by_default(tmp_path):
    """prepare (units mm/day -> range 0:) -> train -> a positive bundle, scaled not shifted,
    whose predictions are >= 0, conserve and keep dry cells dry."""
    import numpy as np
    import rasterio
    from _helpers_train import TINY_ARCH
    from conftest import terrain, write_raster

    from geosr.dataset.prepare import PrepareConfig, prepare
    from geosr.model.bundle import load_bundle
    from geosr.model.predictor import Predictor
    from geosr.sources import LayerSpec
    from geosr.training.config import TrainConfig
    from geosr.training.loop import train

    f, size = 4, 48
    dem = terrain((size, size), seed=2)
    rng = np.random.default_rng(0)
    days = np.stack([np.maximum(0.0, 0.01 * (dem - 700) + rng.gamma(0.5, 3.0, dem.shape))
                     for _ in range(3)]).astype(np.float32)
    days[0] = 0.0  # a dry day
    target = write_raster(tmp_path / "rain.tif", days, band_tags=[
        {"DATE_TIME": f"2020-06-0{d + 1}"} for d in range(3)])
    with rasterio.open(target, "r+") as dst:
        for b in (1, 2, 3):
            dst.set_band_unit(b, "mm/day")
    dem_path = write_raster(tmp_path / "dem.tif", dem)
    ds = tmp_path / "ds"
    prepare(PrepareConfig(out_dir=ds, target=(str(target),),
                          aux=(LayerSpec("dem", str(dem_path)),), res_m=1000.0, factor=f))
    res = train(TrainConfig(dataset=ds, out=tmp_path / "m.geosr", epochs=1, patch=4,
                            batch_size=4, steps_per_epoch=2, arch=TINY_ARCH, device="cpu",
                            threads=1))
    bundle = load_bundle(res.out)
    assert bundle.config.positive and not bundle.config.scene
    assert bundle.norm["coarse"]["mean"] == 0.0 and bundle.norm["target"]["mean"] == 0.0
    assert bundle.training["loss"] == "l1+grad" and bundle.training["augment"] is True
    coarse = days.reshape(3, size // f, f, size // f, f).mean(axis=(2, 4))
    pred = Predictor(bundle, device="cpu").predict(coarse, dem[None, None].repeat(3, 0))
    assert np.nanmin(pred) >= 0
    means = pred.reshape(3, size // f, f, size // f, f).astype(np.float64).mean(axis=(2, 4))
    assert np.abs(means - coarse).max() <= 1e-4 * coarse.max()
    assert (pred[0] == 0).all()
