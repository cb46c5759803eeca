"""vlp: vision-language contrastive pretraining."""
from __future__ import annotations

__version__ = "0.1.0"


def load(path, device=None):
    """Load a run directory or checkpoint; see ``vlp.api.load``."""
    from vlp.api import load as _load

    return _load(path, device)


__all__ = ["__version__", "load"]
