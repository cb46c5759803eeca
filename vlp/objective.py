"""The training objective: the dual encoder, its image-text loss and any heads, summed into one loss.

``Objective.forward(batch)`` returns ``{"loss": total, **terms}``; every term is already weighted, so the
total is their sum. It has no side effects: backward and stepping belong to the loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlp.config import ConfigError

FEATURE_KEYS = ("image_features", "text_features")


@dataclass
class FeatureCache:
    """Detached features of all micro-batches of one contrastive gradient-caching step (GradCache).

    ``splice`` puts the live (grad-carrying) features of micro-batch ``index`` in their place, so the loss sees
    the whole effective batch as negatives. The logit scale and bias carry gradient in the last pass only, so
    their gradient is counted once.
    """

    features: dict[str, torch.Tensor]
    index: int
    size: int
    count: int

    def splice(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spliced = dict(outputs)
        lo, hi = self.index * self.size, (self.index + 1) * self.size
        for key in FEATURE_KEYS:
            cached = self.features[key]
            spliced[key] = torch.cat([cached[:lo], outputs[key], cached[hi:]])
        if self.index != self.count - 1:
            for key in ("logit_scale", "logit_bias"):
                if key in spliced:
                    spliced[key] = spliced[key].detach()
        return spliced


class Objective(nn.Module):
    def __init__(self, model: nn.Module, loss: nn.Module, loss_weight: float = 1.0,
                 heads: nn.ModuleDict | None = None, head_weights: dict[str, float] | None = None,
                 multi_caption: bool = False):
        super().__init__()
        if getattr(loss, "needs_logit_bias", False) and getattr(model, "logit_bias", None) is None:
            raise ConfigError(f"the {type(loss).__name__} needs a learned logit bias: set model.init_logit_bias "
                              "(e.g. -10)")
        if multi_caption and not getattr(loss, "multi_positive", False):
            raise ConfigError(f"data.captions.policy=all gives each image several captions; the {type(loss).__name__} "
                              "takes one: use loss.type=clip_multi_positive")
        self.model, self.loss, self.loss_weight = model, loss, loss_weight
        self.heads = heads if heads is not None else nn.ModuleDict()
        self.head_weights = head_weights or {}
        sharing = [name for name, head in self.heads.items() if head.shares_image_pass]
        if len(sharing) > 1:
            raise ConfigError(f"only one head can run the contrastive image pass; heads {', '.join(sharing)} all "
                              "set shared_pass")
        self.image_pass_head = sharing[0] if sharing else None

    def encode(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict | None]:
        """The dual encoder's outputs for the image-text loss, and the tower's token outputs when a head runs the
        image pass itself (``shared_pass``: the loss then sees that head's masked images)."""
        tokens = batch["tokens"]
        tokens = tokens.flatten(0, 1) if tokens.dim() == 3 else tokens
        if self.image_pass_head is None:
            return self.model(batch["images"], tokens), None
        image_pass = self.heads[self.image_pass_head].encode_images(batch, self.model)
        return self.model(None, tokens, image_embeddings=image_pass["pooled"]), image_pass

    def forward(self, batch: dict, cache: FeatureCache | None = None) -> dict[str, torch.Tensor]:
        outputs, image_pass = self.encode(batch)
        if batch["tokens"].dim() == 3:  # several captions per image (data.captions.policy=all)
            outputs["text_valid"] = batch["caption_mask"].flatten()
        pair_outputs = cache.splice(outputs) if cache is not None else outputs
        pair_terms = {name: self.loss_weight * value for name, value in self.loss(**pair_outputs).items()}
        head_outputs = outputs if image_pass is None else {**outputs, "image_pass": image_pass}
        head_terms = {}
        for name, head in self.heads.items():
            head_terms.update({term: self.head_weights[name] * value
                               for term, value in head(batch, head_outputs, self.model).items()})
        head_share = 1.0 / cache.count if cache is not None else 1.0  # a head sees one micro-batch per pass
        loss = sum(pair_terms.values()) + head_share * sum(head_terms.values())
        return {"loss": loss, **pair_terms, **head_terms}

    def after_optimizer_step(self, step: int) -> None:
        for head in self.heads.values():
            head.after_optimizer_step(self.model, step)
