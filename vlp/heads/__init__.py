"""Optional heads: extra objectives on the dual encoder (MIM, self-distillation, image-image contrastive, ...).

A head is one module registered here with ``@HEADS.register(name)``. It declares its config dataclass as
``Config``; a run switches it on with a ``heads.<name>`` section, whose ``weight`` scales its loss terms. Heads
that keep an EMA teacher update it in ``after_optimizer_step``. The training loop never changes for a new head.
"""
from __future__ import annotations

import torch
from torch import nn

from vlp.config import ConfigError, from_dict
from vlp.utils import Registry


class Head(nn.Module):
    Config: type  # a dataclass of the head's options

    def forward(self, batch: dict, outputs: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """Unweighted loss terms, named after the head (e.g. ``{"mim": ...}``)."""
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called once per optimizer step, after the weights changed (EMA teachers update here)."""


HEADS: Registry[type[Head]] = Registry("head")


def build_heads(sections: dict, model: nn.Module) -> tuple[nn.ModuleDict, dict[str, float]]:
    heads, weights = nn.ModuleDict(), {}
    for name, section in sections.items():
        try:
            head_class = HEADS.get(name)
        except KeyError as err:
            raise ConfigError(f"{err.args[0]} (config section heads.{name})") from None
        options = dict(section or {})
        weights[name] = float(options.pop("weight", 1.0))
        heads[name] = head_class(from_dict(head_class.Config, options, prefix=f"heads.{name}."), model)
    return heads, weights
