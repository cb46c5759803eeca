"""Optional heads: extra objectives on the dual encoder (MIM, self-distillation, image-image contrastive, ...).

A head is one module registered here with ``@HEADS.register(name)``. It declares its config dataclass as
``Config``; a run switches it on with a ``heads.<name>`` section, whose ``weight`` scales its loss terms. Heads
that keep an EMA teacher update it in ``after_optimizer_step``, on a schedule over the ``total_steps`` that
``setup`` gives them. The training loop never changes for a new head. See docs/heads.md.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from vlp.config import ConfigError, from_dict
from vlp.utils import Registry


class Head(nn.Module):
    Config: type  # a dataclass of the head's options
    shares_image_pass = False  # True: ``encode_images`` is the contrastive image pass too (one pass, two losses)

    def forward(self, batch: dict, outputs: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """Unweighted loss terms, named after the head (e.g. ``{"mim": ...}``)."""
        raise NotImplementedError

    def encode_images(self, batch: dict, model: nn.Module) -> dict[str, torch.Tensor]:
        """The image pass the image-text loss uses, for a head that ``shares_image_pass``: the tower's token
        outputs (``pooled``, ``patch_tokens``, ...), handed back to the head as ``outputs["image_pass"]``."""
        raise NotImplementedError

    def setup(self, total_steps: int) -> None:
        """Told the run's length once, after construction (EMA momentum and temperature schedules)."""

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called once per optimizer step, after the weights changed (EMA teachers update here)."""


HEADS: Registry[type[Head]] = Registry("head")
logger = logging.getLogger(__name__)


def build_heads(sections: dict, model: nn.Module, total_steps: int | None = None
                ) -> tuple[nn.ModuleDict, dict[str, float]]:
    """The heads of the ``heads`` config sections and their loss weights; logs each one built."""
    heads, weights = nn.ModuleDict(), {}
    for name, section in sections.items():
        try:
            head_class = HEADS.get(name)
        except KeyError as err:
            raise ConfigError(f"{err.args[0]} (config section heads.{name})") from None
        options = dict(section or {})
        weights[name] = float(options.pop("weight", 1.0))
        cfg = from_dict(head_class.Config, options, prefix=f"heads.{name}.")
        heads[name] = head_class(cfg, model)
        if total_steps is not None:
            heads[name].setup(total_steps)
        trained = sum(p.numel() for p in heads[name].parameters() if p.requires_grad)
        logger.info("head %s built: weight %g, %d trained parameters, %s", name, weights[name], trained, cfg)
    return heads, weights


from vlp.heads import mim_feature, mim_pixel, self_distill, slip  # noqa: E402,F401  (register the heads)
