"""Data: datasets, the resumable sample stream, and preprocessing."""
from __future__ import annotations

from vlp.config import ConfigError
from vlp.data.default_data import CLASS_NAMES, ZERO_SHOT_TEMPLATES, CaptionedImages, load_default


def load_captioned(spec: str, split: str) -> CaptionedImages:
    """Resolve a ``data.train`` / ``data.val`` spec. Only the embedded set ('default') is readable so far."""
    if spec == "default":
        return load_default(split)
    raise ConfigError(f"data source '{spec}' is not supported yet; valid: default (the embedded Fashion-MNIST set)")


__all__ = ["CLASS_NAMES", "ZERO_SHOT_TEMPLATES", "CaptionedImages", "load_captioned", "load_default"]
