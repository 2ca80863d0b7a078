"""Tests for geosr.nn: shapes, conservation, locality, validation and trainability."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from geosr.nn import (
    ChannelAttention,
    Conservation,
    Discriminator,
    Generator,
    Inception,
    NetConfig,
    SpatialAttention,
    UpStage,
    conserve,
    count_parameters,
    split_factor,
)

# Small widths keep every test fast; the default config is exercised where it matters.
TINY = dict(coarse_width=8, branch_width=4, up_width=8, fine_width=8, n_blocks=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(f: int, n_aux: int, h: int = 2, w: int = 3, n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 1, h, w, generator=g)
    aux = torch.randn(n, n_aux, h * f, w * f, generator=g) if n_aux else None
    return coarse, aux


def _block_mean64(x: torch.Tensor, f: int) -> torch.Tensor:
    n, c, hf, wf = x.shape
    return x.double().reshape(n, c, hf // f, f, wf // f, f).mean(dim=(3, 5))


# -- shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [2, 3, 5, 16, 20, 37, 50])
@pytest.mark.parametrize("n_aux", [0, 1, 3])
def test_generator_output_shape(factor, n_aux):
    net = Generator(NetConfig(factor=factor, n_aux=n_aux, **TINY)).eval()
    coarse, aux = _inputs(factor, n_aux)
    with torch.no_grad():
        out = net(coarse, aux)
    assert out.shape == (2, 1, 2 * factor, 3 * factor)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("factor", [16, 37])
def test_single_coarse_cell_default_config(factor):
    net = Generator(NetConfig(factor=factor, n_aux=2)).eval()
    coarse, aux = _inputs(factor, 2, h=1, w=1, n=1)
    with torch.no_grad():
        out = net(coarse, aux)
    assert out.shape == (1, 1, factor, factor)
    # one cell, conserved: the block mean is the coarse value
    assert _block_mean64(out, factor).item() == pytest.approx(coarse.item(), abs=1e-5)


def test_patch_of_4x4_cells_at_factor_16_default_config():
    net = Generator(NetConfig(factor=16, n_aux=1)).eval()
    coarse, aux = _inputs(16, 1, h=4, w=4, n=3)
    with torch.no_grad():
        assert net(coarse, aux).shape == (3, 1, 64, 64)


def test_aux_none_or_empty_when_no_aux():
    net = Generator(NetConfig(factor=4, n_aux=0, **TINY)).eval()
    coarse, _ = _inputs(4, 0)
    with torch.no_grad():
        a = net(coarse)
        b = net(coarse, torch.empty(2, 0, 8, 12))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_multiple_coarse_channels():
    net = Generator(NetConfig(factor=4, n_coarse=3, n_aux=1, **TINY)).eval()
    g = torch.Generator().manual_seed(1)
    coarse = torch.randn(2, 3, 2, 3, generator=g)
    aux = torch.randn(2, 1, 8, 12, generator=g)
    with torch.no_grad():
        out = net(coarse, aux)
    assert out.shape == (2, 1, 8, 12)
    # conservation targets channel 0
    torch.testing.assert_close(_block_mean64(out, 4), coarse[:, :1].double(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("factor", range(2, 65))
def test_split_factor_covers_every_factor(factor):
    stages = split_factor(factor)
    assert math.prod(stages) == factor
    assert 1 <= len(stages) <= 2 and all(s >= 2 for s in stages)
    assert list(stages) == sorted(stages)


@pytest.mark.parametrize("factor,stages", [(2, (2,)), (4, (2, 2)), (16, (4, 4)),
                                           (20, (4, 5)), (37, (37,)), (50, (5, 10))])
def test_split_factor_examples(factor, stages):
    assert split_factor(factor) == stages


def test_upstage_shape():
    x = torch.randn(2, 6, 3, 5)
    assert UpStage(6, 4, 7)(x).shape == (2, 4, 21, 35)


# -- building blocks ------------------------------------------------------------------


@pytest.mark.parametrize("in_ch,out_ch", [(1, 8), (8, 8), (24, 16)])
def test_inception_channels_and_size(in_ch, out_ch):
    x = torch.randn(2, in_ch, 5, 1)
    assert Inception(in_ch, out_ch)(x).shape == (2, out_ch, 5, 1)


def test_inception_rejects_width_not_multiple_of_4():
    with pytest.raises(ValueError, match="out_ch.*multiple of 4.*6"):
        Inception(4, 6)


@pytest.mark.parametrize("window", [0, 3])
def test_attention_preserves_shape(window):
    x = torch.randn(2, 6, 4, 7)
    assert ChannelAttention(6, window=window)(x).shape == x.shape
    assert SpatialAttention()(x).shape == x.shape
    assert SpatialAttention()(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)


def test_channel_attention_global_weights_are_per_channel():
    cam = ChannelAttention(4)
    x = torch.rand(1, 4, 5, 5) + 0.5
    ratio = cam(x) / x
    # one weight per channel, strictly between 0 and 1
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio))
    assert ((ratio > 0) & (ratio < 1)).all()


def test_spatial_attention_weights_are_shared_across_channels():
    sam = SpatialAttention()
    x = torch.rand(1, 3, 6, 6) + 0.5
    ratio = sam(x) / x
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))


@pytest.mark.parametrize("kwargs,name", [(dict(channels=4, window=4), "window"),
                                         (dict(channels=0), "channels"),
                                         (dict(channels=4, reduction=0), "reduction")])
def test_channel_attention_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ChannelAttention(**kwargs)


# -- configuration --------------------------------------------------------------------


def test_config_round_trips_through_json():
    cfg = NetConfig(factor=20, n_aux=2, norm="batch", conserve=False)
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert NetConfig(**d) == cfg
    assert NetConfig.from_dict(d) == cfg
    assert cfg.to_dict() == d


def test_config_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match="unknown field.*colour"):
        NetConfig.from_dict({"factor": 4, "colour": "red"})
    with pytest.raises(ValueError, match="missing field factor"):
        NetConfig.from_dict({"n_aux": 1})


@pytest.mark.parametrize("field,value", [
    ("factor", 1), ("factor", 65), ("factor", 2.0), ("factor", True),
    ("n_coarse", 0), ("n_aux", -1), ("coarse_width", 10), ("branch_width", 0),
    ("up_width", 2), ("fine_width", 18), ("n_blocks", 0), ("fine_blocks", 0),
    ("use_cam", 1), ("use_sam", "yes"), ("conserve", None), ("cam_window", 4),
    ("cam_window", -1), ("norm", "layer"),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    kwargs = {"factor": 4, field: value}
    with pytest.raises(ValueError, match=rf"^{field}: expected.*got {value!r}"):
        NetConfig(**kwargs)


def test_generator_rejects_non_config():
    with pytest.raises(ValueError, match="cfg"):
        Generator({"factor": 4})


def test_generator_rejects_bad_shapes_naming_the_input():
    net = Generator(NetConfig(factor=4, n_aux=2, **TINY))
    coarse, aux = _inputs(4, 2)
    with pytest.raises(ValueError, match=r"aux: expected shape \(2, 2, 8, 12\).*\(2, 2, 8, 13\)"):
        net(coarse, F.pad(aux, (0, 1)))
    with pytest.raises(ValueError, match="aux: expected shape.*None"):
        net(coarse, None)
    with pytest.raises(ValueError, match=r"coarse: expected 1 channel"):
        net(torch.cat([coarse, coarse], 1), aux)
    with pytest.raises(ValueError, match=r"coarse: expected a tensor of shape"):
        net(coarse[0], aux)
    with pytest.raises(ValueError, match="fine_mask"):
        net(coarse, aux, fine_mask=torch.ones(2, 1, 8, 8))
    no_aux = Generator(NetConfig(factor=4, **TINY))
    with pytest.raises(ValueError, match="n_aux=0"):
        no_aux(coarse, aux)


def test_count_parameters():
    net = Generator(NetConfig(factor=4, n_aux=1, **TINY))
    assert count_parameters(net) == sum(p.numel() for p in net.parameters())
    net.head.requires_grad_(False)
    frozen = sum(p.numel() for p in net.head.parameters())
    assert count_parameters(net) == count_parameters(net, trainable_only=False) - frozen


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_norms_train_and_eval(norm):
    net = Generator(NetConfig(factor=4, n_aux=1, norm=norm, **TINY))
    coarse, aux = _inputs(4, 1)
    net.train()
    net(coarse, aux).mean().backward()
    net.eval()
    with torch.no_grad():
        assert net(coarse, aux).shape == (2, 1, 8, 12)


# -- conservation ---------------------------------------------------------------------


@pytest.mark.parametrize("factor", [3, 20, 50])
def test_generator_conserves_block_means(factor):
    net = Generator(NetConfig(factor=factor, n_aux=1, **TINY)).eval()
    coarse, aux = _inputs(factor, 1, seed=factor)
    coarse = coarse * 10 + 280  # kelvin-like magnitudes
    with torch.no_grad():
        out = net(coarse, aux)
    means = _block_mean64(out, factor)
    torch.testing.assert_close(means, coarse.double(), rtol=1e-5, atol=0)


def test_generator_without_conservation_is_not_conserving():
    net = Generator(NetConfig(factor=4, n_aux=1, conserve=False, **TINY)).eval()
    coarse, aux = _inputs(4, 1)
    with torch.no_grad():
        out = net(coarse, aux)
    assert (_block_mean64(out, 4) - coarse.double()).abs().max() > 1e-4


def test_generator_masked_conservation():
    f = 5
    net = Generator(NetConfig(factor=f, n_aux=1, **TINY)).eval()
    coarse, aux = _inputs(f, 1, h=3, w=3)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(2, 1, 3 * f, 3 * f, generator=g) > 0.5
    mask[0, :, :f, :f] = False  # one block without any valid cell
    with torch.no_grad():
        out = net(coarse, aux, fine_mask=mask)
    assert torch.isfinite(out).all()
    m = mask.double()
    masked_mean = _block_mean64(out * m, f) / _block_mean64(m, f)
    has_valid = _block_mean64(m, f) > 0
    torch.testing.assert_close(masked_mean[has_valid], coarse.double()[has_valid],
                               rtol=1e-5, atol=1e-6)
    # the invalid cells (still output: the sea where the aux stops) average to it too
    rest_mean = _block_mean64(out * (1 - m), f) / _block_mean64(1 - m, f)
    has_rest = _block_mean64(1 - m, f) > 0
    torch.testing.assert_close(rest_mean[has_rest], coarse.double()[has_rest],
                               rtol=1e-5, atol=1e-6)


def _conserve_reference(fine, coarse, f, mask):
    out = fine.clone()
    for n in range(fine.shape[0]):
        for i in range(coarse.shape[2]):
            for j in range(coarse.shape[3]):
                blk = (n, 0, slice(i * f, (i + 1) * f), slice(j * f, (j + 1) * f))
                for part in (mask[blk], ~mask[blk]):  # valid and invalid cells apart
                    if part.any() and math.isfinite(coarse[n, 0, i, j]):
                        cell = out[blk]
                        cell[part] += coarse[n, 0, i, j] - fine[blk][part].double().mean().float()
    return out


@settings(max_examples=30, deadline=None)
@given(f=st.integers(1, 6), h=st.integers(1, 3), w=st.integers(1, 3), seed=st.integers(0, 99))
def test_conserve_matches_reference(f, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    fine = torch.randn(2, 1, h * f, w * f, generator=g)
    coarse = torch.randn(2, 1, h, w, generator=g)
    mask = torch.rand(2, 1, h * f, w * f, generator=g) > 0.3
    got = conserve(fine, coarse, f, valid_mask=mask)
    torch.testing.assert_close(got, _conserve_reference(fine, coarse, f, mask),
                               rtol=1e-6, atol=1e-6)
    full = conserve(fine, coarse, f)
    torch.testing.assert_close(_block_mean64(full, f), coarse.double(), rtol=0, atol=1e-6)


def test_conserve_empty_and_nodata_blocks():
    f = 3
    fine = torch.randn(1, 1, 6, 6)
    fine[0, 0, 0, 0] = float("nan")  # invalid cell holding a NaN: must not leak
    coarse = torch.tensor([[[[1.0, 2.0], [float("nan"), 4.0]]]])
    mask = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    mask[..., :3, 3:] = False  # block (0, 1) has no valid cell
    mask[0, 0, 0, 0] = False
    out = conserve(fine, coarse, f, valid_mask=mask)
    # a block without valid cells is conserved over all of them
    assert _block_mean64(out[..., :3, 3:], f).item() == pytest.approx(2.0, abs=1e-6)
    torch.testing.assert_close(out[..., 3:, :3], fine[..., 3:, :3])  # NaN coarse
    assert torch.isfinite(out[..., 3:, 3:]).all()
    assert _block_mean64(out[..., 3:, 3:], f).item() == pytest.approx(4.0, abs=1e-6)
    valid00 = out[0, 0, :3, :3][mask[0, 0, :3, :3]]
    assert valid00.double().mean().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.isnan(out[0, 0, 0, 0])  # the NaN stays in its own (invalid) part


def test_conserve_gradient_is_finite_with_empty_blocks():
    fine = torch.randn(1, 1, 4, 4, requires_grad=True)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1
    conserve(fine, torch.zeros(1, 1, 2, 2), 2, valid_mask=mask).sum().backward()
    assert torch.isfinite(fine.grad).all()


def test_conserve_validation():
    with pytest.raises(ValueError, match="coarse: expected shape"):
        conserve(torch.zeros(1, 1, 6, 6), torch.zeros(1, 1, 2, 3), 3)
    with pytest.raises(ValueError, match="valid_mask"):
        conserve(torch.zeros(1, 1, 6, 6), torch.zeros(1, 1, 2, 2), 3,
                 valid_mask=torch.ones(1, 1, 6, 5))
    with pytest.raises(ValueError, match="factor"):
        Conservation(0)


# -- locality (tiled inference) -------------------------------------------------------


def test_halo_bounds_the_receptive_field():
    f = 3
    net = Generator(NetConfig(factor=f, n_aux=1, **TINY)).double().eval()
    halo = net.halo_px
    n = 2 * math.ceil(halo / f) + 5
    coarse = torch.randn(1, 1, n, n, dtype=torch.float64, requires_grad=True)
    aux = torch.randn(1, 1, n * f, n * f, dtype=torch.float64, requires_grad=True)
    y = x = (n // 2) * f + 1
    net(coarse, aux)[0, 0, y, x].backward()
    rows, cols = (aux.grad[0, 0] != 0).nonzero(as_tuple=True)
    reach = max((rows - y).abs().max().item(), (cols - x).abs().max().item())
    assert 0 < reach <= halo
    rows, cols = (coarse.grad[0, 0] != 0).nonzero(as_tuple=True)
    reach_cells = max((rows - y // f).abs().max().item(), (cols - x // f).abs().max().item())
    assert (reach_cells + 1) * f <= halo
    # and the bound is not wildly loose
    assert reach > halo / 2


def test_crop_with_halo_matches_whole_raster():
    f = 4
    net = Generator(NetConfig(factor=f, n_aux=1, **TINY)).eval()
    hc = math.ceil(net.halo_px / f)
    n = 2 * hc + 3
    coarse, aux = _inputs(f, 1, h=n, w=n + 2, n=1)
    with torch.no_grad():
        whole = net(coarse, aux)
        part = net(coarse[..., :, 2:], aux[..., :, 2 * f:])
    core = slice(hc * f, (hc + 3) * f)
    torch.testing.assert_close(part[..., core, core], whole[..., core, 2 * f:][..., core],
                               rtol=0, atol=1e-5)


def test_encode_decode_tiles_with_decode_halo():
    f = 4
    net = Generator(NetConfig(factor=f, n_aux=1, **TINY)).eval()
    assert net.decode_halo_px < net.halo_px
    hc = math.ceil(net.decode_halo_px / f)
    n = 2 * hc + 2
    coarse, aux = _inputs(f, 1, h=n, w=n, n=1)
    with torch.no_grad():
        whole = net(coarse, aux)
        feats = net.encode(coarse, net.pool_aux(aux))  # whole raster at the coarse scale
        win = slice(1, n)  # a window cut one cell from the top-left corner
        fine_win = slice(f, n * f)
        part = net.decode(feats[..., win, win], coarse[..., win, win],
                          aux[..., fine_win, fine_win])
    inner = slice((hc - 1) * f, (hc + 1) * f)  # >= decode halo from the window edge
    full = slice(hc * f, (hc + 2) * f)
    torch.testing.assert_close(part[..., inner, inner], whole[..., full, full],
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(norm="group"), dict(cam_window=0)])
def test_non_local_configs_report_no_halo(kwargs):
    net = Generator(NetConfig(factor=4, **TINY, **kwargs))
    assert net.halo_px is None and net.decode_halo_px is None


# -- training behaviour ---------------------------------------------------------------


def test_same_seed_same_output():
    coarse, aux = _inputs(5, 2)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        net = Generator(NetConfig(factor=5, n_aux=2, **TINY)).eval()
        with torch.no_grad():
            outs.append(net(coarse, aux))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.manual_seed(124)
    with torch.no_grad():
        other = Generator(NetConfig(factor=5, n_aux=2, **TINY)).eval()(coarse, aux)
    assert not torch.equal(other, outs[0])


def test_gradients_reach_every_aux_branch():
    net = Generator(NetConfig(factor=4, n_aux=2, **TINY))
    coarse, aux = _inputs(4, 2)
    F.l1_loss(net(coarse, aux), torch.randn(2, 1, 8, 12)).backward()
    for name, module in [("branch 0", net.branches[0]), ("branch 1", net.branches[1]),
                         ("fine aux", net.fine_aux)]:
        grads = [p.grad for p in module.parameters()]
        assert all(gr is not None for gr in grads), name
        assert sum(gr.abs().sum().item() for gr in grads) > 0, name
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing


def _smooth(g, shape, k):
    x = torch.randn(*shape, generator=g)
    return F.avg_pool2d(F.pad(x, (k, k, k, k), mode="replicate"), 2 * k + 1, stride=1)


def test_tiny_model_overfits_aux_driven_detail():
    # Smooth coarse field; fine truth = its bilinear upsampling + 0.5 * the aux detail,
    # made block-conserving, so a perfect residual exists: 0.5 * aux.
    g = torch.Generator().manual_seed(0)
    f, h = 4, 6
    aux = 3 * _smooth(g, (4, 1, h * f, h * f), 2)
    coarse = 3 * _smooth(g, (4, 1, h, h), 1)
    detail = aux - F.interpolate(F.avg_pool2d(aux, f), scale_factor=f, mode="nearest")
    base = F.interpolate(coarse, scale_factor=f, mode="bilinear", align_corners=False)
    target = conserve(base + 0.5 * detail, coarse, f)

    torch.manual_seed(0)
    net = Generator(NetConfig(factor=f, n_aux=1, coarse_width=8, branch_width=8, up_width=8,
                              fine_width=16, n_blocks=1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 300)
    with torch.no_grad():
        first = F.l1_loss(net(coarse, aux), target).item()
    assert first > 0.1  # the interpolation baseline misses the detail
    for _ in range(300):
        opt.zero_grad()
        loss = F.l1_loss(net(coarse, aux), target)
        loss.backward()
        opt.step()
        sched.step()
        if loss.item() < first / 10:
            break
    assert loss.item() < first / 10, f"L1 {first:.4f} -> {loss.item():.4f}"


# -- discriminator --------------------------------------------------------------------


def test_discriminator_patch_logits():
    d = Discriminator(in_channels=3)
    fine, cond = torch.randn(2, 1, 64, 48), torch.randn(2, 2, 64, 48)
    logits = d(fine, cond)
    assert logits.shape == (2, 1, 4, 3)
    loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    loss.backward()
    assert torch.isfinite(loss)
    p = d.eval().probabilities(fine, cond)
    assert ((p > 0) & (p < 1)).all()


def test_discriminator_widths_and_validation():
    d = Discriminator(widths=(8, 16), norm="none")
    assert d(torch.randn(1, 1, 4, 4)).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"H, W >= 4"):
        d(torch.randn(1, 1, 3, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        d(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="widths"):
        Discriminator(widths=())
    with pytest.raises(ValueError, match="in_channels"):
        Discriminator(in_channels=0)
    with pytest.raises(ValueError, match="norm"):
        Discriminator(norm="layer")


# -- aux gain (learned local regression) ----------------------------------------------


def test_aux_gain_starts_at_zero_and_learns_a_lapse_rate():
    """With a fine anomaly the interpolation cannot see, only the gain path can fit it."""
    torch.manual_seed(0)
    f = 4
    cfg = NetConfig(factor=f, n_aux=1, conserve=False, **TINY)
    net = Generator(cfg)
    assert net.gain is not None and not net.gain.weight.any()
    g = torch.Generator().manual_seed(1)
    aux = torch.randn(8, 1, 6 * f, 6 * f, generator=g)
    smooth = F.interpolate(F.avg_pool2d(aux, f), scale_factor=f, mode="bilinear",
                           align_corners=False)
    target = -0.65 * (aux - smooth)  # a uniform "lapse rate" on the fine anomaly
    coarse = torch.zeros(8, 1, 6, 6)
    opt = torch.optim.Adam(net.gain.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = F.mse_loss(net(coarse, aux), target)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10


def test_config_saved_before_aux_gain_loads_without_it():
    d = NetConfig(factor=4, n_aux=1).to_dict()
    del d["aux_gain"]
    assert NetConfig.from_dict(d).aux_gain is False
    assert Generator(NetConfig.from_dict(d)).gain is None
    assert NetConfig(factor=4, n_aux=1).aux_gain is True
