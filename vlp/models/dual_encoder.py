"""The CLIP-style dual encoder: an image tower and a text tower projected into one space (Radford et al. 2021)."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError, ModelConfig
from vlp.models.image_towers import IMAGE_TOWERS
from vlp.models.text_towers import TEXT_TOWERS
from vlp.models.tokenizers import Tokenizer

MAX_LOGIT_SCALE = 100.0


def _lookup(registry, name: str):
    try:
        return registry.get(name)
    except KeyError as err:
        raise ConfigError(err.args[0]) from None


class DualEncoder(nn.Module):
    """``forward(images, tokens)`` returns normalized features and the learned logit scale (and bias)."""

    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer):
        super().__init__()
        self.embed_dim = cfg.embed_dim
        self.visual = _lookup(IMAGE_TOWERS, cfg.image.type)(cfg.image, cfg.embed_dim)
        self.text = _lookup(TEXT_TOWERS, cfg.text.type)(cfg.text, cfg.embed_dim, tokenizer)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.logit_bias = (nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))
                           if cfg.init_logit_bias is not None else None)
        if cfg.lock_image:
            self.visual.lock(cfg.lock_image_unlocked_groups)
        if cfg.lock_text:
            self.text.lock(cfg.lock_text_unlocked_layers)
        if cfg.grad_checkpointing:
            self.visual.set_grad_checkpointing(True)
            self.text.set_grad_checkpointing(True)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def scale(self) -> torch.Tensor:
        # clamp the value, not the parameter: forward stays free of side effects (CLIP clamps at 100)
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor,
                image_embeddings: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``image_embeddings``: the image tower's output when a head already ran the image pass (shared)."""
        out = {
            "image_features": (self.encode_image(images) if image_embeddings is None
                               else F.normalize(image_embeddings, dim=-1)),
            "text_features": self.encode_text(tokens),
            "logit_scale": self.scale(),
        }
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Norms, biases, embeddings of position and the logit scale/bias take no weight decay (CLIP, OpenCLIP)."""
    return param.ndim < 2 or "logit_" in name or "positional_embedding" in name or name.endswith(
        ("cls_token", "pos_embed", "class_embedding"))


