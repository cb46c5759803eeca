"""A deterministic, resumable sample stream over a map-style dataset.

Global sample position ``p`` maps to ``permutation(seed, epoch)[p % N]`` with ``epoch = p // N``, and every
sample's augmentation is seeded from ``(seed, p)``. The stream position is one integer, the number of
micro-batches consumed, so a resumed run sees exactly the samples (and augmentations) an uninterrupted run
would have seen next, whatever the number of dataloader workers.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class SampleStream(Sampler[list[tuple[int, int]]]):
    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0):
        if num_samples <= 0:
            raise ValueError("the training set is empty")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start

    @lru_cache(maxsize=4)
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def micro_batch(self, index: int) -> list[tuple[int, int]]:
        """This rank's share of global micro-batch ``index``: (sample index, augmentation seed) pairs."""
        first = (index * self.world_size + self.rank) * self.batch_size
        out = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.num_samples)
            out.append((int(self._permutation(epoch)[offset]), self.seed * 1_000_003 + position))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        index = self.start
        while True:
            yield self.micro_batch(index)
            index += 1

    def epoch(self, micro_batches: int) -> float:
        return micro_batches * self.batch_size * self.world_size / self.num_samples


class ImageTextDataset(Dataset):
    """Items are ``(index, augmentation seed)``; returns ``(image tensor, caption)``."""

    def __init__(self, get_image: Callable[[int], object], captions: list[str], transform: Callable):
        self.get_image, self.captions, self.transform = get_image, captions, transform

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, str]:
        index, aug_seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(aug_seed)
            image = self.transform(self.get_image(index))
        return image, self.captions[index]


class Collate:
    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor]):
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[torch.Tensor, str]]) -> dict:
        images, captions = zip(*items)
        return {"images": torch.stack(images), "tokens": self.tokenizer(list(captions)), "captions": list(captions)}


def stream_loader(dataset: ImageTextDataset, stream: SampleStream, tokenizer, num_workers: int) -> DataLoader:
    # its own generator: starting the iterator must not draw from the global RNG that a resume restores
    return DataLoader(dataset, batch_sampler=stream, collate_fn=Collate(tokenizer), num_workers=num_workers,
                      persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers else None,
                      generator=torch.Generator().manual_seed(stream.seed))
