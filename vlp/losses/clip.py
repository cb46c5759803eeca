"""Symmetric InfoNCE (CLIP; Radford et al. 2021) with OpenCLIP's distributed "local loss".

Each rank all-gathers features with gradients and computes only its own rows against the global batch:
memory O(B * world * B) instead of O((world * B)^2), and after DDP averages gradients the result equals
single-process training on the global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlp.losses.distributed import gather_with_grad, rank_and_world


class ClipLoss(nn.Module):
    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                **_: torch.Tensor) -> dict[str, torch.Tensor]:
        rank, _ = rank_and_world()
        all_images, all_texts = gather_with_grad(image_features), gather_with_grad(text_features)
        logits_per_image = logit_scale * image_features @ all_texts.T
        logits_per_text = logit_scale * text_features @ all_images.T
        labels = torch.arange(image_features.shape[0], device=image_features.device) + rank * image_features.shape[0]
        loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        return {"contrastive": loss}
