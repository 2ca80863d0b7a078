"""PyTorch networks: the multi-source constrained generator and its discriminator.

``Generator(NetConfig(factor=20, n_aux=2))(coarse, aux)`` maps a coarse field
``(N, 1, h, w)`` and fine aux rasters ``(N, 2, 20h, 20w)`` to ``(N, 1, 20h, 20w)``.
"""

from geosr.nn.attention import ChannelAttention, SpatialAttention
from geosr.nn.blocks import Inception
from geosr.nn.config import NetConfig
from geosr.nn.conservation import Conservation, SoftmaxConservation, conserve, conserve_softmax
from geosr.nn.discriminator import Discriminator
from geosr.nn.generator import Generator
from geosr.nn.params import count_parameters
from geosr.nn.upsample import UpStage, split_factor

__all__ = [
    "ChannelAttention",
    "Conservation",
    "Discriminator",
    "Generator",
    "Inception",
    "NetConfig",
    "SoftmaxConservation",
    "SpatialAttention",
    "UpStage",
    "conserve",
    "conserve_softmax",
    "count_parameters",
    "split_factor",
]
