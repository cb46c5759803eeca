"""Pairwise sigmoid loss (SigLIP; Zhai et al. 2023): ``-sum log sigmoid(z_ij (s <x_i, y_j> + b)) / B``.

Each rank scores its images against the texts of every rank (gathered with gradients); after DDP averages
gradients this equals the single-process loss on the global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError
from vlp.losses.distributed import gather_with_grad, rank_and_world


class SigLipLoss(nn.Module):
    needs_logit_bias = True
    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None, **_: torch.Tensor) -> dict[str, torch.Tensor]:
        if logit_bias is None:
            raise ConfigError("the sigmoid loss needs a learned logit bias: set model.init_logit_bias (e.g. -10)")
        rank, _ = rank_and_world()
        batch = image_features.shape[0]
        logits = logit_scale * image_features @ gather_with_grad(text_features).T + logit_bias
        signs = -torch.ones_like(logits)
        signs[:, rank * batch:(rank + 1) * batch].fill_diagonal_(1.0)
        return {"sigmoid": -F.logsigmoid(signs * logits).sum() / batch}
