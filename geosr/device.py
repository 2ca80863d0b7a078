"""Compute device choice shared by ``train`` and ``downscale``."""

from __future__ import annotations

from enum import Enum

from geosr.errors import InputError


class DeviceChoice(str, Enum):
    """Values of ``--device``."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def resolve_device(choice: str | DeviceChoice = "auto"):
    """Turn ``auto|cpu|cuda[:N]`` into a :class:`torch.device`.

    ``auto`` picks CUDA when a GPU is visible, else the CPU. Asking for CUDA where none
    is available is an input error (exit 2), not a silent fallback.
    """
    import torch

    value = choice.value if isinstance(choice, DeviceChoice) else str(choice)
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cpu":
        return torch.device("cpu")
    if value == "cuda" or value.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {value}: no CUDA GPU is available on this machine; "
                             "expected --device cpu or auto")
        dev = torch.device(value)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {value}: only {torch.cuda.device_count()} GPU(s) visible; "
                             "expected an index below that")
        return dev
    raise InputError(f"--device {value!r} is not a device; expected auto, cpu, cuda or cuda:N")
