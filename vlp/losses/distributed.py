"""Cross-process feature exchange for contrastive losses, with gradients flowing back to every rank."""
from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """All-gather ``features`` [B, D] from every rank into [world * B, D]; the backward pass returns each rank
    the summed gradient of its own rows, so every rank's loss trains every rank's encoder."""
    _, world = rank_and_world()
    if world == 1:
        return features
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(features), dim=0)
