"""The multi-source constrained generator: coarse field + fine aux -> fine field.

Layout (``f`` = factor, ``h x w`` coarse cells, ``H x W = hf x wf`` fine pixels):

1. Coarse trunk on ``coarse (N, n_coarse, h, w)``: 1x1 conv + norm, ``n_blocks``
   inception blocks, SAM.
2. One branch per aux channel on its area average over each coarse cell
   (``avg_pool2d(aux, f)``): ``n_blocks`` inception blocks of ``branch_width``.
3. Concatenate trunk and branches; CAM; SAM.
4. Upsample in one or two stages (:func:`~geosr.nn.upsample.split_factor`); at the
   intermediate scale ``n_blocks`` inception blocks, CAM, SAM.
5. At fine resolution, concatenate a light branch on the full-resolution aux
   (3x3 convs ``n_aux -> 4 n_aux -> branch_width``); ``fine_blocks`` inception blocks;
   head 3x3 conv -> norm -> 3x3 conv to one channel.
6. Residual: the head's output is added to the bilinear upsampling of coarse channel 0.
   Why: the network then only learns the sub-grid detail, starts close to the
   interpolation baseline, and trains fast and stably. With ``cfg.aux_gain``, a 1x1
   conv on the coarse features also predicts a gain per coarse cell and aux channel;
   the gains, bilinearly interpolated, multiply each aux's fine anomaly (aux minus the
   bilinear interpolation of its coarse-cell means) and the products are added too: a
   regression sharpening whose coefficients vary in space (zero at initialisation).
7. Optional hard conservation (``cfg.conserve``): every ``f x f`` block averages to
   coarse channel 0 (:func:`~geosr.nn.conservation.conserve`).
   With ``cfg.positive`` (a non-negative field such as rain), steps 6-7 are
   multiplicative instead: the head's output and the gain terms are added to the
   logarithm of the bicubic interpolation of coarse channel 0, and the softmax
   constraint layer (:func:`~geosr.nn.conservation.conserve_softmax`) shares each coarse
   value among its block's pixels by those log-weights: never negative, exactly
   conserved, dry cells dry, and at initialisation close to the (conserved) bicubic field.
8. With ``cfg.spread`` (a probabilistic model), a second head on the same fine features
   gives the per-pixel spread (:class:`~geosr.nn.spread.SpreadHead`), returned as
   channel 1 beside the conserved best estimate.

Inputs are expected standardised and finite (fill nodata before calling; pass
``fine_mask`` so that conservation ignores filled cells).

Steps 1-3 (:meth:`Generator.encode`) only see the coarse grid; steps 4-7
(:meth:`Generator.decode`) have a small receptive field. A caller may encode a whole
raster at once (cheap) and decode it tile by tile with :attr:`Generator.decode_halo_px`
of context, instead of the larger :attr:`Generator.halo_px` needed by :meth:`forward`.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from geosr.nn.attention import ChannelAttention, SpatialAttention
from geosr.nn.blocks import Inception, act, conv, inception_stack
from geosr.nn.config import NetConfig
from geosr.nn.conservation import LOG_FLOOR, Conservation, SoftmaxConservation
from geosr.nn.norm import make_norm
from geosr.nn.params import count_parameters
from geosr.nn.spread import SpreadHead
from geosr.nn.upsample import UpStage, split_factor

log = logging.getLogger(__name__)

# Scale of the head's last conv at initialisation: the network starts near the
# interpolation baseline, yet every parameter gets a gradient from the first step.
HEAD_INIT_SCALE = 0.1
SAM_KERNEL = 7


class Generator(nn.Module):
    """Downscaling generator; see the module docstring for the layout.

    ``forward(coarse, aux, fine_mask=None)`` maps ``coarse (N, n_coarse, h, w)`` and
    ``aux (N, n_aux, h*f, w*f)`` to ``(N, 1, h*f, w*f)``; any ``h, w >= 1``.
    """

    def __init__(self, cfg: NetConfig) -> None:
        """Build the network.

        Args:
            cfg: hyper-parameters.

        Raises:
            ValueError: if ``cfg`` is not a :class:`NetConfig`.
        """
        super().__init__()
        if not isinstance(cfg, NetConfig):
            raise ValueError(f"cfg: expected a NetConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.stages = split_factor(cfg.factor)
        norm, nb, bw = cfg.norm, cfg.n_blocks, cfg.branch_width

        cw = cfg.coarse_width
        self.stem = nn.Sequential(conv(cfg.n_coarse, cw, 1), make_norm(norm, cw), act())
        self.trunk = nn.Sequential(inception_stack(cw, cw, nb, norm=norm), self._sam())
        self.branches = nn.ModuleList(inception_stack(1, bw, nb, norm=norm)
                                      for _ in range(cfg.n_aux))
        ch = cw + cfg.n_aux * bw
        self.merged_channels = ch
        self.merge = nn.Sequential(self._cam(ch), self._sam())

        self.ups = nn.ModuleList()
        self.mids = nn.ModuleList()
        for r in self.stages[:-1]:
            self.ups.append(UpStage(ch, cfg.up_width, r, norm=norm))
            ch = cfg.up_width
            self.mids.append(nn.Sequential(inception_stack(ch, ch, nb, norm=norm),
                                           self._cam(ch), self._sam()))
        fw = cfg.fine_width
        self.last_up = UpStage(ch, fw, self.stages[-1], norm=norm)

        na = cfg.n_aux
        self.fine_aux = (nn.Sequential(conv(na, 4 * na, 3), act(), conv(4 * na, bw, 3), act())
                         if na else None)
        self.fine = inception_stack(fw + (bw if na else 0), fw, cfg.fine_blocks, norm=norm)
        hidden = max(4, fw // 2)
        self.head = nn.Sequential(conv(fw, hidden, 3), make_norm(norm, hidden), act(),
                                  conv(hidden, 1, 3))
        with torch.no_grad():
            self.head[-1].weight.mul_(HEAD_INIT_SCALE)
            self.head[-1].bias.zero_()
        self.spread_head = SpreadHead(fw, hidden) if cfg.spread else None
        self.gain = None
        if cfg.aux_gain and na:
            self.gain = conv(self.merged_channels, na, 1)
            with torch.no_grad():
                self.gain.weight.zero_()
                self.gain.bias.zero_()
        # How much of each scene slope to use, learned (1 at initialisation): where the
        # scene's regression does not help (daily rain on a DEM) the network turns it down.
        self.scene_weight = nn.Parameter(torch.ones(na)) if cfg.scene and na else None
        self.conservation = None
        if cfg.conserve:
            self.conservation = (SoftmaxConservation(cfg.factor) if cfg.positive
                                 else Conservation(cfg.factor))
        log.debug("Generator: factor %d in stages %s, %d parameters, halo %s px",
                  cfg.factor, self.stages, count_parameters(self), self.halo_px)

    def _cam(self, ch: int) -> nn.Module:
        if not self.cfg.use_cam:
            return nn.Identity()
        return ChannelAttention(ch, reduction=2, window=self.cfg.cam_window)

    def _sam(self) -> nn.Module:
        return SpatialAttention(kernel=SAM_KERNEL) if self.cfg.use_sam else nn.Identity()

    # -- receptive field ------------------------------------------------------------

    @property
    def local(self) -> bool:
        """Whether the network (in eval mode) is a local operator of finite radius.

        False with GroupNorm or global CAM, whose statistics span the whole input.
        """
        cfg = self.cfg
        return cfg.norm != "group" and not (cfg.use_cam and cfg.cam_window == 0)

    def _attn_radius(self) -> int:
        cfg = self.cfg
        return ((cfg.cam_window // 2 if cfg.use_cam else 0)
                + (SAM_KERNEL // 2 if cfg.use_sam else 0))

    def _decode_radius(self) -> tuple[int, int]:
        """(radius in coarse cells at the encoder output, radius in fine aux pixels)."""
        cfg = self.cfg
        r = 2 * (1 + cfg.fine_blocks)  # head (two 3x3) + fine blocks, fine pixels
        aux_px = r + 2
        mid = Inception.RADIUS * cfg.n_blocks + self._attn_radius()
        for i in reversed(range(len(self.stages))):
            r += 1  # the stage's 3x3 conv, at its output scale
            r = math.ceil(r / self.stages[i]) + 1  # bilinear reads +-1 input pixel
            if i > 0:
                r += mid
        return r, aux_px

    @property
    def decode_halo_px(self) -> int | None:
        """Context (fine pixels per side) for :meth:`decode` to match whole-raster output.

        An upper bound: a crop whose pixels lie at least this far inside it (and whose
        edges lie on coarse-cell boundaries) gives there the same values as the whole
        raster, in eval mode. ``None`` when the network is not local.
        """
        if not self.local:
            return None
        f = self.cfg.factor
        cells, aux_px = self._decode_radius()
        # the residual base: bilinear reads +-1 coarse cell, bicubic +-2
        px = max((cells + 1) * f, aux_px, (3 if self.cfg.positive else 2) * f)
        return px + (f if self.cfg.conserve else 0)

    @property
    def halo_px(self) -> int | None:
        """Context (fine pixels per side) for :meth:`forward`; see :attr:`decode_halo_px`."""
        if not self.local:
            return None
        cfg, f = self.cfg, self.cfg.factor
        cells, _ = self._decode_radius()
        cells += self._attn_radius()  # merge
        trunk = cells + Inception.RADIUS * cfg.n_blocks + (SAM_KERNEL // 2 if cfg.use_sam else 0)
        branch = cells + Inception.RADIUS * cfg.n_blocks  # + the pooled cell itself below
        px = max((trunk + 1) * f, (branch + 1) * f if cfg.n_aux else 0, self.decode_halo_px)
        return px + (f if cfg.conserve else 0)

    # -- forward --------------------------------------------------------------------

    def _check(self, coarse: torch.Tensor, aux: torch.Tensor | None,
               fine_mask: torch.Tensor | None) -> None:
        cfg, f = self.cfg, self.cfg.factor
        if not isinstance(coarse, torch.Tensor) or coarse.dim() != 4 \
                or coarse.shape[1] < 1 or coarse.shape[2] < 1 or coarse.shape[3] < 1:
            raise ValueError(f"coarse: expected a tensor of shape (N, C, h, w) with "
                             f"h, w >= 1, got {_shape(coarse)}")
        n, c, h, w = coarse.shape
        if c != cfg.n_coarse:
            raise ValueError(f"coarse: expected {cfg.n_coarse} channel(s) (n_coarse), "
                             f"got {_shape(coarse)}")
        want = (n, cfg.n_aux, h * f, w * f)
        if cfg.n_aux == 0:
            if aux is not None and (not isinstance(aux, torch.Tensor) or aux.dim() != 4
                                    or aux.shape[1] != 0):
                raise ValueError(f"aux: the model takes no aux channels (n_aux=0), "
                                 f"got {_shape(aux)}")
        elif not isinstance(aux, torch.Tensor) or tuple(aux.shape) != want:
            raise ValueError(f"aux: expected shape {want} (n_aux={cfg.n_aux} on the fine grid "
                             f"of factor {f}), got {_shape(aux)}")
        if fine_mask is not None and (not isinstance(fine_mask, torch.Tensor)
                                      or tuple(fine_mask.shape) != (n, 1, h * f, w * f)):
            raise ValueError(f"fine_mask: expected shape {(n, 1, h * f, w * f)}, "
                             f"got {_shape(fine_mask)}")

    def pool_aux(self, aux: torch.Tensor) -> torch.Tensor:
        """Area-average fine aux to the coarse grid: ``(N, A, hf, wf) -> (N, A, h, w)``."""
        return F.avg_pool2d(aux, self.cfg.factor)

    def encode(self, coarse: torch.Tensor, aux_coarse: torch.Tensor | None) -> torch.Tensor:
        """Coarse-scale features (steps 1-3).

        Args:
            coarse: ``(N, n_coarse, h, w)``.
            aux_coarse: ``(N, n_aux, h, w)``, the aux averaged over each coarse cell
                (:meth:`pool_aux`); ``None`` when ``n_aux == 0``.

        Returns:
            ``(N, coarse_width + n_aux * branch_width, h, w)``.
        """
        cfg = self.cfg
        if not isinstance(coarse, torch.Tensor) or coarse.dim() != 4 \
                or coarse.shape[1] != cfg.n_coarse:
            raise ValueError(f"coarse: expected shape (N, {cfg.n_coarse}, h, w), "
                             f"got {_shape(coarse)}")
        # channels-last after the stem: with one input channel the layout is ambiguous
        # and the stem's 1x1 conv would return NCHW for the whole encoder
        t = self.trunk(_channels_last(self.stem(coarse)))
        if cfg.n_aux:
            want = (coarse.shape[0], cfg.n_aux, *coarse.shape[2:])
            if not isinstance(aux_coarse, torch.Tensor) or tuple(aux_coarse.shape) != want:
                raise ValueError(f"aux_coarse: expected shape {want}, got {_shape(aux_coarse)}")
            aux_coarse = _channels_last(aux_coarse)
            t = torch.cat([t] + [b(aux_coarse[:, i:i + 1]) for i, b in enumerate(self.branches)],
                          dim=1)
        return self.merge(t)

    def decode(self, features: torch.Tensor, coarse: torch.Tensor, aux: torch.Tensor | None,
               *, fine_mask: torch.Tensor | None = None,
               scene_gain: torch.Tensor | None = None,
               strip_px: int | None = None,
               crop: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Fine field from coarse features (steps 4-7).

        Args:
            features: :meth:`encode` output for ``coarse``, ``(N, F, h, w)``.
            coarse: ``(N, n_coarse, h, w)``; channel 0 is the residual base and the
                conservation target.
            aux: ``(N, n_aux, hf, wf)`` or ``None`` when ``n_aux == 0``.
            fine_mask: optional ``(N, 1, hf, wf)`` valid fine cells for conservation.
            scene_gain: optional ``(N, n_aux)`` per-sample gains added to the learned
                ones (a scene-adaptive model, :mod:`geosr.model.scene`).
            strip_px: run the fine stage (step 5, most of the cost) on row strips of
                about this many fine pixels, each with :attr:`strip_halo_px` rows of
                context; the result is the same to float rounding. Why: a strip's
                activations, not the whole input's, are in memory at once (inference on
                large tiles). ``None``: the whole input at once.
            crop: coarse cells (top, left, bottom, right) to leave out of the output;
                the fine stage then runs only on the rest plus :attr:`strip_halo_px` of
                context (the same values to float rounding). Why: the coarse cells
                around a tile are context for the intermediate scales, which reach
                several cells, while the fine stage, most of the cost, reaches a few
                fine pixels. ``None``: the whole input.

        Returns:
            ``(N, 1, hf, wf)``; ``(N, 2, hf, wf)`` (best estimate, spread) with
            ``cfg.spread``; with ``crop``, the ``hf``/``wf`` of the cells kept.
        """
        self._check(coarse, aux, fine_mask)
        if not isinstance(features, torch.Tensor) or features.dim() != 4 \
                or features.shape[0] != coarse.shape[0] \
                or features.shape[2:] != coarse.shape[2:]:
            raise ValueError(f"features: expected shape (N, C, h, w) matching coarse "
                             f"{_shape(coarse)}, got {_shape(features)}")
        gain = self.gain(_channels_last(features)) if self.gain is not None else None
        if scene_gain is not None and self.cfg.n_aux:
            if not isinstance(scene_gain, torch.Tensor) or \
                    tuple(scene_gain.shape) != (coarse.shape[0], self.cfg.n_aux):
                raise ValueError(f"scene_gain: expected shape {(coarse.shape[0], self.cfg.n_aux)}, "
                                 f"got {_shape(scene_gain)}")
            sg = scene_gain.to(features.dtype)
            if self.scene_weight is not None:
                sg = sg * self.scene_weight
            sg = sg[:, :, None, None]
            gain = sg.expand(-1, -1, *features.shape[2:]) if gain is None else gain + sg
        t = _channels_last(features)
        for up, mid in zip(self.ups, self.mids, strict=True):
            t = mid(up(t))
        f = self.cfg.factor
        size = (coarse.shape[-2] * f, coarse.shape[-1] * f)
        keep = _Keep(crop, self, size)
        feat, res = self._fine_stage(keep.stage_input(t), keep.aux(aux), strip_px=strip_px)
        res = keep.in_window(res)
        if self.cfg.positive:
            # log-space base: bicubic overshoots below zero next to dry cells; clamp, floor
            base = F.interpolate(coarse[:, :1], size=size, mode="bicubic", align_corners=False)
            out = torch.log(keep.fine(base).clamp_min(0.0) + LOG_FLOOR) + res
        else:
            base = F.interpolate(coarse[:, :1], size=size, mode="bilinear", align_corners=False)
            out = keep.fine(base) + res
        if gain is not None:
            smooth = F.interpolate(F.avg_pool2d(aux, f), size=size, mode="bilinear",
                                   align_corners=False)
            beta = F.interpolate(gain, size=size, mode="bilinear", align_corners=False)
            detail = keep.fine(aux) - keep.fine(smooth)
            out = out + (keep.fine(beta) * detail).sum(dim=1, keepdim=True)
        if self.conservation is not None:
            out = self.conservation(out, keep.cells(coarse[:, :1]), keep.fine(fine_mask))
        elif self.cfg.positive:
            out = torch.exp(out)
        if self.spread_head is not None:
            out = torch.cat([out, keep.in_window(self.spread_head(feat))], dim=1)
        return out

    @property
    def fine_channels(self) -> int:
        """Channels of the widest full-resolution array: the fine stage's input (upsampled
        features beside the fine aux branch) or the aux branch's first layer."""
        cfg = self.cfg
        return max(cfg.fine_width + (cfg.branch_width if cfg.n_aux else 0), 4 * cfg.n_aux)

    @property
    def strip_halo_px(self) -> int:
        """Context (fine rows per side) a row strip of the fine stage needs to match the
        whole input: a multiple of the last upsampling factor ``r``.

        The last stage's bilinear interpolation clamps at a strip edge in its first
        ``ceil(r / 2)`` rows; the refine and head convs, the fine aux branch and the fine
        blocks then spread that edge effect by their radii.
        """
        r = self.stages[-1]
        px = (max(math.ceil(r / 2) + 1, 2 if self.fine_aux is not None else 0)
              + Inception.RADIUS * self.cfg.fine_blocks + 2)
        return math.ceil(px / r) * r

    def _fine(self, t: torch.Tensor, aux: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(fine features, head output) from the intermediate-scale features ``t``."""
        t = self.last_up(t)
        if self.fine_aux is not None:
            t = torch.cat([t, self.fine_aux(_channels_last(aux))], dim=1)
        feat = self.fine(t)
        return feat, self.head(feat)

    def _fine_stage(self, t: torch.Tensor, aux: torch.Tensor | None, *,
                    strip_px: int | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """:meth:`_fine`, on row strips of about ``strip_px`` fine pixels when given.

        Returns the fine features (``None`` from strips unless the spread head needs
        them) and the head output.
        """
        r, halo = self.stages[-1], self.strip_halo_px
        rows = t.shape[-2] * r
        if strip_px is None or rows <= strip_px + halo:
            return self._fine(t, aux)
        step = max(r, strip_px // r * r)
        feats, res = [], []
        for s in range(0, rows, step):
            e = min(rows, s + step)
            lo, hi = max(0, s - halo), min(rows, e + halo)
            feat, y = self._fine(t[..., lo // r:hi // r, :],
                                 aux[..., lo:hi, :] if aux is not None else None)
            res.append(y[..., s - lo:e - lo, :])
            if self.spread_head is not None:
                feats.append(feat[..., s - lo:e - lo, :])
        return (torch.cat(feats, dim=-2) if feats else None), torch.cat(res, dim=-2)

    def forward(self, coarse: torch.Tensor, aux: torch.Tensor | None = None, *,
                fine_mask: torch.Tensor | None = None,
                scene_gain: torch.Tensor | None = None) -> torch.Tensor:
        """Downscale.

        Args:
            coarse: ``(N, n_coarse, h, w)`` on the coarse grid; channel 0 is the target
                variable.
            aux: ``(N, n_aux, h*factor, w*factor)`` on the fine grid; ``None`` (or zero
                channels) when ``n_aux == 0``.
            fine_mask: optional ``(N, 1, h*factor, w*factor)`` bool/0-1 valid fine cells;
                conservation then averages over valid cells only.
            scene_gain: optional ``(N, n_aux)`` scene slopes (see :meth:`decode`).

        Returns:
            ``(N, 1, h*factor, w*factor)``; with ``cfg.spread``, ``(N, 2, ...)``: the best
            estimate and its per-pixel spread (standard deviation, same units).

        Raises:
            ValueError: on shapes that do not fit the configuration.
        """
        self._check(coarse, aux, fine_mask)
        if self.cfg.n_aux == 0:
            aux = None
        feats = self.encode(coarse, self.pool_aux(aux) if aux is not None else None)
        return self.decode(feats, coarse, aux, fine_mask=fine_mask, scene_gain=scene_gain)


class _Keep:
    """The cells :meth:`Generator.decode` keeps (its ``crop``), in fine pixels, and the
    fine stage's window around them (:attr:`Generator.strip_halo_px` more per side)."""

    def __init__(self, crop: tuple[int, int, int, int] | None, net: Generator,
                 size: tuple[int, int]) -> None:
        f, r, halo = net.cfg.factor, net.stages[-1], net.strip_halo_px  # halo: r multiple
        top, left, bottom, right = (0, 0, 0, 0) if crop is None else (int(c) for c in crop)
        if min(top, left, bottom, right) < 0 or (top + bottom) * f >= size[0] \
                or (left + right) * f >= size[1]:
            raise ValueError(f"crop: expected non-negative cells leaving part of the "
                             f"{size[0] // f}x{size[1] // f} window, got {crop!r}")
        self.cut = (top, left, bottom, right)
        self.r = r
        self.kept, self.window = [], []
        for n, lo, hi in ((size[0], top, bottom), (size[1], left, right)):
            start, stop = lo * f, n - hi * f
            self.kept.append((start, stop))
            self.window.append((max(0, start - halo) if lo else 0,
                                min(n, stop + halo) if hi else n))

    def stage_input(self, t: torch.Tensor) -> torch.Tensor:
        """The last stage's input (at ``1/r`` of the fine resolution) under the window."""
        (a, b), (c, d) = self.window
        r = self.r
        return t[..., a // r:b // r, c // r:d // r]

    def aux(self, aux: torch.Tensor | None) -> torch.Tensor | None:
        """The fine aux under the window."""
        (a, b), (c, d) = self.window
        return None if aux is None else aux[..., a:b, c:d]

    def in_window(self, x: torch.Tensor) -> torch.Tensor:
        """The kept pixels of a tensor that covers the window."""
        (a, b), (c, d) = self.kept
        (wa, _), (wc, _) = self.window
        return x[..., a - wa:b - wa, c - wc:d - wc]

    def fine(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """The kept pixels of a tensor that covers the whole fine grid."""
        (a, b), (c, d) = self.kept
        return None if x is None else x[..., a:b, c:d]

    def cells(self, x: torch.Tensor) -> torch.Tensor:
        """The kept cells of a coarse-grid tensor."""
        top, left, bottom, right = self.cut
        return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """NHWC memory layout: oneDNN convolutions with few channels run ~4x faster on CPU."""
    return x.contiguous(memory_format=torch.channels_last)


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else repr(x)
