"""The network's inference paths (no autograd, channels-last, the fine stage on row
strips) give the whole-input, autograd result to float rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geosr.inference import heap
from geosr.nn import ChannelAttention, Generator, Inception, NetConfig
from geosr.nn.blocks import MaxPool3

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-5
"""Largest difference, relative to the output's std."""


def _inputs(f: int, n_aux: int, h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, h, w, generator=g)
    aux = torch.randn(1, n_aux, h * f, w * f, generator=g) if n_aux else None
    return coarse, aux


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.std())


def _trained_like(net: Generator, seed: int = 1) -> Generator:
    """Random non-zero weights everywhere (the head and gain start at zero or small)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.15 * torch.randn(p.shape, generator=g))
    return net.eval()


CONFIGS = [
    dict(factor=16, n_aux=1, fine_blocks=1, aux_gain=True),  # the shipped model's layout
    dict(factor=20, n_aux=2, fine_blocks=2, coarse_width=8, branch_width=4, up_width=8,
         fine_width=8, n_blocks=1),
    dict(factor=5, n_aux=0, fine_blocks=1, coarse_width=8, up_width=8, fine_width=8,
         n_blocks=1, spread=True),
    dict(factor=6, n_aux=1, fine_blocks=1, coarse_width=8, branch_width=4, up_width=8,
         fine_width=8, n_blocks=1, conserve=False),
    dict(factor=8, n_aux=1, fine_blocks=1, coarse_width=8, branch_width=4, up_width=8,
         fine_width=8, n_blocks=1, positive=True),  # the non-negative (softmax) network
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"f{c['factor']}-aux{c['n_aux']}")
def test_fine_stage_on_strips_matches_whole_input(cfg):
    net = _trained_like(Generator(NetConfig(**cfg)))
    f = cfg["factor"]
    coarse, aux = _inputs(f, cfg["n_aux"], h=7, w=5)
    with torch.no_grad():
        feats = net.encode(coarse, net.pool_aux(aux) if aux is not None else None)
        whole = net.decode(feats, coarse, aux)
        rows = 7 * f
        for strip in (1, net.stages[-1], 3 * net.stages[-1] + 1, rows // 2, rows - 1):
            got = net.decode(feats, coarse, aux, strip_px=strip)
            assert got.shape == whole.shape
            assert _rel(got, whole) <= TOL, f"strip_px={strip}"


def test_strip_context_is_needed():
    """A strip context one stage step short of :attr:`strip_halo_px` shows at the seams,
    so the test above would catch a halo that is too small."""
    net = _trained_like(Generator(NetConfig(factor=16, n_aux=1)))
    coarse, aux = _inputs(16, 1, h=6, w=4)

    class Short(Generator):
        @property
        def strip_halo_px(self) -> int:
            return super().strip_halo_px - self.stages[-1]

    short = Short(net.cfg).eval()
    short.load_state_dict(net.state_dict())
    with torch.no_grad():
        feats = net.encode(coarse, net.pool_aux(aux))
        whole = net.decode(feats, coarse, aux)
        assert _rel(short.decode(feats, coarse, aux, strip_px=32), whole) > 100 * TOL


@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=lambda c: f"f{c['factor']}-aux{c['n_aux']}")
def test_inference_paths_match_the_autograd_path(cfg):
    """Without autograd, the inception blocks, pooling and attention take faster paths
    (matrix products on NHWC rows, separable windows); the result is the same."""
    net = _trained_like(Generator(NetConfig(**cfg)))
    f = cfg["factor"]
    coarse, aux = _inputs(f, cfg["n_aux"], h=6, w=5)
    with torch.no_grad():
        fast = net(coarse, aux)
    slow = net(coarse.clone().requires_grad_(), aux).detach()  # autograd: the plain paths
    assert _rel(fast, slow) <= TOL


@pytest.mark.parametrize("shape", [(1, 5, 1, 1), (2, 7, 1, 9), (2, 7, 9, 1), (1, 3, 2, 2),
                                   (1, 24, 13, 17), (1, 3, 33, 5), (2, 4, 65, 7)])
def test_max_pool_channels_last_matches_replicate_padding(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ref = F.max_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    got = MaxPool3()(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(got, ref)
    assert torch.equal(MaxPool3()(x), ref)


def test_inception_nhwc_path_matches_and_stays_channels_last():
    block = Inception(6, 8).eval()
    x = torch.randn(2, 6, 9, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fast = block(x)
    slow = block(x.clone().requires_grad_()).detach()
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)
    assert fast.is_contiguous(memory_format=torch.channels_last)


def test_windowed_channel_attention_separable_pooling_matches():
    cam = ChannelAttention(8, window=5).eval()
    x = torch.randn(1, 8, 12, 10).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fast = cam(x)
    slow = cam(x.clone().requires_grad_()).detach()
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)


def test_retained_heap_sets_and_restores_glibc_thresholds(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_mallopt", lambda: lambda k, v: calls.append((k, v)) or 1)
    with heap.retained_heap():
        assert calls == [(heap.M_MMAP_THRESHOLD, heap.MMAP_THRESHOLD_MAX),
                         (heap.M_TRIM_THRESHOLD, heap.TRIM_THRESHOLD),
                         (heap.M_ARENA_MAX, 1)]
    assert calls[3:] == [(heap.M_MMAP_THRESHOLD, heap.DEFAULT_THRESHOLD),
                         (heap.M_TRIM_THRESHOLD, heap.DEFAULT_THRESHOLD)]
    calls.clear()
    with heap.retained_heap(False):
        pass
    assert calls == []


def test_retained_heap_runs_on_this_system():
    with heap.retained_heap():
        x = torch.ones(3 * 1024 * 1024)
    assert float(x.sum()) == 3 * 1024 * 1024


def test_shipped_model_predicts_the_same_on_strips():
    from geosr.model.bundle import load_bundle
    from geosr.model.predictor import Predictor
    from geosr.model.registry import resolve_model

    bundle = load_bundle(resolve_model("alps-t2m"))
    g = torch.Generator().manual_seed(0)
    coarse = (10 + 3 * torch.randn(1, 12, 10, generator=g)).numpy()
    aux = (1200 + 500 * torch.randn(1, 1, 192, 160, generator=g)).numpy()
    whole = Predictor(bundle, strip_px=None).predict(coarse, aux, margin=(3, 2, 3, 2))
    strips = Predictor(bundle, strip_px=24).predict(coarse, aux, margin=(3, 2, 3, 2))
    assert strips.shape == whole.shape == (1, 96, 96)
    assert float(abs(strips - whole).max() / whole.std()) <= TOL


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 9, 13])
def test_window_max_matches_max_pool(k):
    from geosr.nn.attention import _window_max

    x = torch.randn(2, 5, 20, 17, generator=torch.Generator().manual_seed(k))
    x = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(_window_max(_window_max(x, k, 2), k, 3), F.max_pool2d(x, k, stride=1))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"f{c['factor']}-aux{c['n_aux']}")
def test_decode_crop_matches_the_whole_output(cfg):
    """``crop`` leaves cells out of the output and runs the fine stage only on the rest
    plus its halo: the kept cells are the whole decode's, to float rounding."""
    net = _trained_like(Generator(NetConfig(**cfg)))
    f = cfg["factor"]
    coarse, aux = _inputs(f, cfg["n_aux"], h=9, w=8, seed=3)
    mask = torch.ones(1, 1, 9 * f, 8 * f, dtype=torch.bool)
    mask[..., :f + 3, :5] = False  # conservation over part of a cell
    with torch.no_grad():
        feats = net.encode(coarse, net.pool_aux(aux) if aux is not None else None)
        whole = net.decode(feats, coarse, aux, fine_mask=mask)
        for crop in [(1, 2, 3, 1), (0, 3, 0, 0), (2, 0, 0, 4), (0, 0, 0, 0)]:
            t, left, b, r = crop
            got = net.decode(feats, coarse, aux, fine_mask=mask, crop=crop, strip_px=2 * f)
            ref = whole[..., t * f:(9 - b) * f, left * f:(8 - r) * f]
            assert got.shape == ref.shape
            assert _rel(got, ref) <= TOL, f"crop={crop}"
        with pytest.raises(ValueError, match="crop"):
            net.decode(feats, coarse, aux, crop=(5, 0, 4, 0))


@pytest.mark.parametrize("pad", [(1, 1), (2, 2), (3, 3), (0, 2), (1, 0)])
def test_replicate_pad_matches_torch(pad):
    from geosr.nn.blocks import replicate_pad

    x = torch.randn(2, 5, 11, 7, generator=torch.Generator().manual_seed(1))
    rows, cols = pad
    want = F.pad(x, (cols, cols, rows, rows), mode="replicate")
    with torch.no_grad():
        got = replicate_pad(x.contiguous(memory_format=torch.channels_last), rows, cols)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want)
    assert torch.equal(replicate_pad(x, rows, cols), want)  # NCHW / autograd: F.pad


def test_conv_keeps_the_state_dict_of_torch_conv():
    from geosr.nn.blocks import conv

    c = conv(3, 4, 5)
    ref = torch.nn.Conv2d(3, 4, 5, padding=2, padding_mode="replicate")
    ref.load_state_dict(c.state_dict())
    assert list(c.state_dict()) == list(ref.state_dict())
    x = torch.randn(1, 3, 12, 9, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = c(x.contiguous(memory_format=torch.channels_last))
        assert _rel(got, ref(x)) <= TOL
