"""Image-text losses. Each maps the model's named outputs to named loss terms."""
from __future__ import annotations

from torch import nn

from vlp.config import ConfigError, LossConfig
from vlp.losses.clip import ClipLoss
from vlp.losses.multi_positive import MultiPositiveClipLoss
from vlp.losses.siglip import SigLipLoss
from vlp.utils import Registry

LOSSES: Registry[type[nn.Module]] = Registry("loss")
LOSSES.register("clip")(ClipLoss)
LOSSES.register("siglip")(SigLipLoss)
LOSSES.register("clip_multi_positive")(MultiPositiveClipLoss)


def build_loss(cfg: LossConfig) -> nn.Module:
    try:
        return LOSSES.get(cfg.type)()
    except KeyError as err:
        raise ConfigError(err.args[0]) from None
