"""What the image-tower heads share: the projection MLP, the token-level tower check and the batch-field check."""
from __future__ import annotations

import torch
from torch import nn

from vlp.config import ConfigError

VIEW_SETTINGS = {"global_crops": "data.views.global_crops (e.g. 2)", "local_crops": "data.views.local_crops (e.g. 6)",
                 "mim_mask": "data.views.mask (random or block)",
                 "global_crop_masks": "data.views.mask (random or block) with data.views.global_crops"}


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers through ``dims`` with GELU between them (DINO's projection head, SLIP's SimCLR head)."""
    layers: list[nn.Module] = []
    for i, (width_in, width_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(width_in, width_out))
        if i < len(dims) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def token_tower(model: nn.Module, head: str) -> nn.Module:
    """The image tower, if it has the token-level path (``forward_tokens``) that ``head`` needs; a tower whose
    path depends on its model (a timm tower) says why it cannot run it in ``tokens_unsupported``."""
    tower = model.visual
    if hasattr(tower, "forward_tokens"):
        problem = getattr(tower, "tokens_unsupported", None)
    else:
        problem = f"got {type(tower).__name__}"
    if problem:
        raise ConfigError(f"heads.{head} needs a ViT image tower with patch tokens (model.image.type=open_clip_vit, "
                          f"or timm with a timm VisionTransformer, e.g. vit_base_patch16_224); {problem}")
    return tower


def check_choice(head: str, key: str, value: str, valid) -> None:
    """A one-line ConfigError naming ``heads.<head>.<key>`` and its valid values when ``value`` is not one."""
    if value not in valid:
        raise ConfigError(f"unknown heads.{head}.{key} '{value}'; valid: {', '.join(valid)}")


def field(batch: dict, name: str, head: str) -> torch.Tensor:
    """The batch field ``name``, or a one-line ConfigError naming the ``data.views`` setting that makes it."""
    if name not in batch:
        raise ConfigError(f"heads.{head} needs the batch field '{name}': set {VIEW_SETTINGS[name]}")
    return batch[name]


def views_first(crops: torch.Tensor) -> torch.Tensor:
    """[B, V, 3, H, W] -> [V * B, 3, H, W], view-major, so ``.view(V, B, ...)`` splits the outputs by view."""
    return crops.transpose(0, 1).flatten(0, 1)
