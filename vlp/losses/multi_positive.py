"""InfoNCE with several captions per image as positives (DreamLIP; Zheng et al. 2024), for
``data.captions.policy=all``.

Text features arrive as [B*K, D], K captions per image in image order, with ``text_valid`` marking real
captions (images with fewer than K have padding). Image->text: each image's loss is the mean of
-log softmax over all valid texts of the global batch, over its own valid captions. Text->image: each valid
caption is a query with its image as the target. Distributed like :class:`ClipLoss`: local rows against
the gathered batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlp.losses.distributed import gather_with_grad, rank_and_world


class MultiPositiveClipLoss(nn.Module):
    multi_positive = True

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                text_valid: torch.Tensor, **_: torch.Tensor) -> dict[str, torch.Tensor]:
        rank, _ = rank_and_world()
        batch, per_image = image_features.shape[0], text_features.shape[0] // image_features.shape[0]
        all_images, all_texts = gather_with_grad(image_features), gather_with_grad(text_features)
        all_valid = gather_with_grad(text_valid.float()).bool()
        device = image_features.device

        logits_per_image = (logit_scale * image_features @ all_texts.T).masked_fill(~all_valid, float("-inf"))
        log_probs = logits_per_image.log_softmax(dim=1).view(batch, -1, per_image)  # [B, world*B, K]
        own = log_probs[torch.arange(batch, device=device), torch.arange(batch, device=device) + rank * batch]
        valid = text_valid.view(batch, per_image)
        image_to_text = -(own.masked_fill(~valid, 0).sum(1) / valid.sum(1).clamp(min=1)).mean()

        owners = torch.arange(batch, device=device).repeat_interleave(per_image) + rank * batch
        logits_per_text = logit_scale * text_features @ all_images.T
        text_to_image = F.cross_entropy(logits_per_text[text_valid], owners[text_valid])
        return {"contrastive": (image_to_text + text_to_image) / 2}
