"""Image-image contrastive learning next to CLIP: SLIP (Mu et al. 2022), SimCLR's loss (Chen et al. 2020).

Two augmented views of each image (``global_crops`` 0 and 1) go through the image tower and a separate MLP
head; the NT-Xent/InfoNCE loss makes each view pick out its partner among all other views of the global batch
(features are all-gathered with gradients, as the image-text loss does). Any image tower works: the head reads
the tower's embedding. SLIP uses BatchNorm in the MLP; this head uses none, so every process computes the same
function of its samples. Term: ``slip``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError
from vlp.heads import HEADS, Head
from vlp.heads.layers import field, mlp, views_first
from vlp.losses.distributed import gather_with_grad, rank_and_world


@dataclass
class SlipConfig:
    hidden_dim: int = 4096  # SLIP: 4096
    out_dim: int = 256  # SLIP: 256
    temperature: float = 0.1  # SLIP: 0.1


@HEADS.register("slip")
class SlipHead(Head):
    Config = SlipConfig

    def __init__(self, cfg: SlipConfig, model: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.projection = mlp([model.embed_dim, cfg.hidden_dim, cfg.hidden_dim, cfg.out_dim])

    def forward(self, batch: dict, outputs: dict, model: nn.Module) -> dict[str, torch.Tensor]:
        crops = field(batch, "global_crops", "slip")
        if crops.shape[1] < 2:
            raise ConfigError("heads.slip needs two augmented views: set data.views.global_crops=2")
        z = F.normalize(self.projection(model.visual(views_first(crops[:, :2]))), dim=-1)
        return {"slip": simclr_loss(*z.chunk(2), self.cfg.temperature)}


def simclr_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent for the local rows against the global batch: each view's positive is its partner, its
    negatives are the 2N - 2 other views (SLIP's ``SIMCLRLoss``)."""
    rank, _ = rank_and_world()
    all_a, all_b = gather_with_grad(a), gather_with_grad(b)
    labels = torch.arange(len(a), device=a.device) + rank * len(a)
    self_mask = F.one_hot(labels, len(all_a)).to(torch.bool)
    logits_aa = (a @ all_a.T / temperature).masked_fill(self_mask, float("-inf"))
    logits_bb = (b @ all_b.T / temperature).masked_fill(self_mask, float("-inf"))
    loss_a = F.cross_entropy(torch.cat([a @ all_b.T / temperature, logits_aa], dim=1), labels)
    loss_b = F.cross_entropy(torch.cat([b @ all_a.T / temperature, logits_bb], dim=1), labels)
    return (loss_a + loss_b) / 2

