"""Shipped models: the bundles under ``models/`` (installed as
``geosr.shipped_models``), found by name."""


from __future__ import annotations

import logging
import os
from pathlib import Path

from geosr.errors import BundleError
from geosr.model.bundle import BUNDLE_SUFFIX

log = logging.getLogger(__name__)

def shipped_model_dirs() -> list[Path]:
    """Folders that hold shipped models (installed package data, then a source checkout)."""
    import geosr

    here = Path(geosr.__file__).resolve()
    dirs = [here.parent / "shipped_models", here.parents[1] / "models"]
    return [d for d in dirs if d.is_dir()]


def available_models() -> list[str]:
    """Names of the shipped models."""
    names: set[str] = set()
    for d in shipped_model_dirs():
        for p in d.glob(f"*{BUNDLE_SUFFIX}"):
            names.add(p.stem)
        for p in d.glob(f"*/*{BUNDLE_SUFFIX}"):
            if p.stem == p.parent.name:
                names.add(p.stem)
    return sorted(names)


def resolve_model(spec: str | os.PathLike) -> Path:
    """A model file from ``--model``: an existing path, or the name of a shipped model.

    Raises:
        BundleError: neither a file nor a known name; the message lists the shipped names.
    """
    text = str(spec)
    path = Path(text)
    if path.is_file():
        return path
    if text and "/" not in text and os.sep not in text:
        name = text[: -len(BUNDLE_SUFFIX)] if text.endswith(BUNDLE_SUFFIX) else text
        for d in shipped_model_dirs():
            for cand in (d / name / f"{name}{BUNDLE_SUFFIX}", d / f"{name}{BUNDLE_SUFFIX}"):
                if cand.is_file():
                    return cand
    names = available_models()
    shown = ", ".join(names) if names else "none are installed"
    raise BundleError(f"--model {text!r}: no such file and no shipped model of that name; "
                      f"expected a .geosr file or one of: {shown}")
