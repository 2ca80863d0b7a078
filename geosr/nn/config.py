"""Network hyper-parameters: :class:`NetConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from geosr.nn.norm import check_norm

MIN_FACTOR, MAX_FACTOR = 2, 64
MAX_WIDTH = 1024
MAX_BLOCKS = 16


def _check_int(name: str, value: Any, lo: int, hi: int, *, multiple: int = 1) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    if not ok or value % multiple:
        extra = f", a multiple of {multiple}" if multiple > 1 else ""
        raise ValueError(f"{name}: expected an integer in [{lo}, {hi}]{extra}, got {value!r}")


@dataclass(frozen=True)
class NetConfig:
    """Hyper-parameters of :class:`~geosr.nn.generator.Generator`.

    JSON-friendly: ``dataclasses.asdict(cfg)`` holds only ints, bools and strings, and
    ``NetConfig(**d)`` (or :meth:`from_dict`, which names unknown keys) rebuilds it.

    The defaults are sized for CPU inference: the fine-resolution part, which
    dominates cost, has ``fine_width`` channels and ``fine_blocks`` light blocks.

    Attributes:
        factor: integer fine/coarse ratio, 2..64.
        n_coarse: channels of the coarse input; channel 0 is the downscaled variable.
        n_aux: fine auxiliary channels (elevation, NDVI...); may be 0.
        coarse_width: channels of the coarse trunk (multiple of 4).
        branch_width: channels of each per-aux-channel coarse branch and of the fine
            aux branch (multiple of 4).
        up_width: channels at intermediate scales between upsampling stages.
        fine_width: channels at fine resolution (multiple of 4). Keep small: cost.
        n_blocks: inception blocks per coarse / intermediate stage and per branch.
        fine_blocks: inception blocks at fine resolution.
        use_cam: channel attention after merging branches and at intermediate scales.
        use_sam: spatial attention at the coarse and intermediate scales.
        cam_window: CAM pooling window in pixels of the scale it acts on; 0 pools
            globally as in the research design, but then predictions depend on tile
            size (see :class:`~geosr.nn.attention.ChannelAttention`). Odd if > 0.
        conserve: make every output block of ``factor x factor`` pixels average exactly
            to the primary coarse value (:func:`~geosr.nn.conservation.conserve`).
        aux_gain: a learned local regression on the aux: the coarse features give, per
            coarse cell and aux channel, a gain ``beta`` (bilinearly interpolated to the
            fine grid) that multiplies the aux's fine anomaly (the aux minus the bilinear
            interpolation of its coarse-cell means), and the product is added to the
            output. This is regression sharpening with coefficients that vary in space and
            are predicted from context (e.g. a lapse rate that changes across a valley
            inversion); it makes elevation-driven detail easy to learn and to generalise.
            Bundles written before this option existed load with it off.
        spread: probabilistic output: a second head gives, per fine pixel, the standard
            deviation of the truth around the (conserved) best estimate, in standardised
            units; :meth:`Generator.forward` then returns two channels, the best estimate
            and the spread. Off: a deterministic model (bundles written before the option
            existed).
        scene: scene-adaptive: the caller standardises the coarse input and the target
            with each scene's own mean and std, and passes the scene's sharpening slopes
            (``scene_gain`` of :meth:`Generator.forward`), which are added to the learned
            gains (:mod:`geosr.model.scene`). Off: fixed training statistics (bundles
            written before the option existed).
        scene_aux: with ``scene``, the continuous aux layers are standardised with each
            scene's own mean and spread of their coarse-cell means too (and the scene
            slopes are per scene aux spread), so relief of another scale (50 m hills
            against Alpine valleys) reaches the network at the scale it was trained on.
            Off: the training data's aux statistics (bundles written before the option
            existed).
        positive: a non-negative field (precipitation): the head's output is added to
            the logarithm of the bicubic interpolation of coarse channel 0 (and the aux
            gains act on that logarithm, a multiplicative sharpening), and the softmax
            constraint layer (:func:`~geosr.nn.conservation.conserve_softmax`) turns it
            into a field that is ``>= 0`` everywhere and averages exactly to the coarse
            cell. Without ``conserve``, the output is the bicubic base times the
            exponential of those terms: non-negative, not conserved. The caller must scale
            without shifting (zero stays zero). Off: the additive residual and conservation
            (bundles written before the option existed).
        norm: ``"none"`` (default), ``"batch"`` or ``"group"``. ``"none"`` keeps the
            network a local operator so tiled prediction is seamless; BatchNorm in train
            mode depends on batch statistics and is fragile with small batches;
            GroupNorm normalises over each tile. See :mod:`geosr.nn.norm`.
    """

    factor: int
    n_coarse: int = 1
    n_aux: int = 0
    coarse_width: int = 32
    branch_width: int = 8
    up_width: int = 32
    fine_width: int = 16
    n_blocks: int = 2
    fine_blocks: int = 1
    use_cam: bool = True
    use_sam: bool = True
    cam_window: int = 7
    conserve: bool = True
    norm: str = "none"
    aux_gain: bool = True
    spread: bool = False
    scene: bool = False
    positive: bool = False
    scene_aux: bool = False

    def __post_init__(self) -> None:
        _check_int("factor", self.factor, MIN_FACTOR, MAX_FACTOR)
        _check_int("n_coarse", self.n_coarse, 1, 64)
        _check_int("n_aux", self.n_aux, 0, 64)
        for name in ("coarse_width", "branch_width", "up_width", "fine_width"):
            _check_int(name, getattr(self, name), 4, MAX_WIDTH, multiple=4)
        _check_int("n_blocks", self.n_blocks, 1, MAX_BLOCKS)
        _check_int("fine_blocks", self.fine_blocks, 1, MAX_BLOCKS)
        for name in ("use_cam", "use_sam", "conserve", "aux_gain", "spread", "scene",
                     "positive", "scene_aux"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        _check_int("cam_window", self.cam_window, 0, 63)
        if self.cam_window and self.cam_window % 2 == 0:
            raise ValueError(f"cam_window: expected 0 (global) or an odd size, "
                             f"got {self.cam_window!r}")
        check_norm(self.norm)
        if self.scene_aux and not self.scene:
            raise ValueError("scene_aux: scene aux statistics need a scene-adaptive model; "
                             "expected scene true")
        if self.positive and self.scene:
            raise ValueError("positive: a non-negative model is not scene-adaptive "
                             "(scene standardisation shifts zero); expected scene false")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetConfig:
        """Rebuild from :func:`dataclasses.asdict` output.

        Raises:
            ValueError: on unknown or missing keys, or invalid values.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"NetConfig: unknown field(s) {', '.join(unknown)}; "
                             f"expected some of {', '.join(sorted(known))}")
        if "factor" not in d:
            raise ValueError("NetConfig: missing field factor")
        d = dict(d)
        d.setdefault("aux_gain", False)  # configs saved before the option had no gain path
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """``dataclasses.asdict(self)``: plain JSON-serialisable values."""
        return dataclasses.asdict(self)
