"""Masked-image-modeling masks over a ``grid x grid`` patch grid, made on the CPU workers.

- ``random``: a uniformly random subset of patches (MAE, iBOT's random variant);
- ``block``: BEiT's block-wise masking: rectangles of random area and aspect ratio until the target is met.

The masked fraction of each image is drawn uniformly from ``ratio`` = [low, high]. A mask is a bool tensor,
True where a patch is masked.
"""
from __future__ import annotations

import math

import torch

from vlp.utils import Registry

MASKS: Registry = Registry("MIM mask")


@MASKS.register("random")
class RandomMask:
    def __init__(self, grid: int, ratio: list[float]):
        self.grid, self.ratio = grid, ratio

    def target(self, generator: torch.Generator) -> int:
        low, high = self.ratio
        fraction = low + (high - low) * torch.rand((), generator=generator).item()
        return int(round(fraction * self.grid * self.grid))

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        count = self.target(generator)
        mask = torch.zeros(self.grid * self.grid, dtype=torch.bool)
        mask[torch.randperm(self.grid * self.grid, generator=generator)[:count]] = True
        return mask.view(self.grid, self.grid)


@MASKS.register("block")
class BlockMask(RandomMask):
    min_block, max_aspect = 4, 3.0

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        target = self.target(generator)
        mask = torch.zeros(self.grid, self.grid, dtype=torch.bool)
        log_aspect = (math.log(1 / self.max_aspect), math.log(self.max_aspect))
        for _ in range(10 * self.grid * self.grid):  # bounded: a run of useless draws cannot spin forever
            remaining = target - int(mask.sum())
            if remaining <= 0:
                break
            uniform = torch.rand(2, generator=generator).tolist()
            area = self.min_block + (max(remaining, self.min_block) - self.min_block) * uniform[0]
            aspect = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * uniform[1])
            height = min(self.grid, max(1, int(round(math.sqrt(area * aspect)))))
            width = min(self.grid, max(1, int(round(math.sqrt(area / aspect)))))
            top = int(torch.randint(0, self.grid - height + 1, (), generator=generator))
            left = int(torch.randint(0, self.grid - width + 1, (), generator=generator))
            block = mask[top:top + height, left:left + width]
            if int((~block).sum()) <= remaining:  # BEiT: only blocks that do not overshoot the target
                block.fill_(True)
        if int(mask.sum()) < target:  # top up with single patches, so the ratio is exact
            free = (~mask).flatten().nonzero().flatten()
            extra = free[torch.randperm(len(free), generator=generator)[:target - int(mask.sum())]]
            mask.view(-1)[extra] = True
        return mask
