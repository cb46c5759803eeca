"""``phash_dedup``: drop near-duplicate images (resized, re-encoded, lightly edited copies): those whose perceptual
hash (imagehash's pHash) is within ``max_distance`` bits of an earlier kept image's; the first in input order stays.

A dropped sample's score is its Hamming distance to the nearest earlier kept image. Images are hashed in
``prepare``, by the engine's workers; with ``fast_decode`` a JPEG decodes at 1/2 to 1/8 scale, still at least the
``4 * hash_size`` pixels pHash looks at, several times faster and within a bit or two of the full-size hash. The
pairs within range come from a faiss multi-index hash range search (``IndexBinaryMultiHash``), so the work grows
with the number of near pairs, not with the square of the number of images; identical hashes are searched once."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict, drop, keep
from vlp.recipes.steps import STEPS, GlobalStep

MAX_TABLE_BITS = 64  # faiss hashes a table's bits into one 64-bit key


@dataclass
class PhashDedupConfig:
    hash_size: int = 8  # the hash has hash_size² bits
    max_distance: int = 4  # Hamming distance, in bits, at which two images are the same picture
    fast_decode: bool = True  # JPEGs decode at reduced scale, as in vlp.data; false: the full image's pHash
    batch_size: int = 256


def phash_bits(image, hash_size: int) -> np.ndarray:
    """The pHash of a PIL image as packed bits (zero-padded to whole bytes: faiss wants them, and padding adds
    nothing to a distance)."""
    import imagehash  # imports scipy: only once images are hashed

    return np.packbits(imagehash.phash(image, hash_size=hash_size).hash.flatten())


def multi_hash_plan(bits: int, max_distance: int, count: int) -> tuple[int, int, int]:
    """(tables, bits per table, bit flips probed) for an exact ``IndexBinaryMultiHash`` range search: the code is cut
    into ``tables`` disjoint chunks, and two codes within ``max_distance`` differ in at most ``max_distance //
    tables`` bits of some chunk (pigeonhole), which the probe covers when ``flips`` is at least that. Of the exact
    plans, the one with the fewest expected candidates per query (probed buckets times codes per bucket)."""
    plans = []
    for flips in range(3):
        tables = max_distance // (flips + 1) + 1
        width = min(bits // tables, MAX_TABLE_BITS)
        if width >= 1:
            probes = tables * sum(math.comb(width, k) for k in range(flips + 1))
            plans.append((probes * (1 + count / 2 ** width), tables, width, flips))
    return min(plans)[1:]


def near_pairs(codes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (query, neighbour, distance) of rows of ``codes`` within ``max_distance``, self-pairs included,
    sorted by query."""
    import faiss  # heavy: only once a decision is made

    bits = codes.shape[1] * 8
    tables, width, flips = multi_hash_plan(bits, max_distance, len(codes))
    index = faiss.IndexBinaryMultiHash(bits, tables, width)
    index.nflip = flips
    index.add(codes)
    limits, distances, neighbours = index.range_search(codes, max_distance + 1)  # faiss keeps distance < radius
    queries = np.repeat(np.arange(len(codes)), np.diff(limits).astype(np.int64))
    return queries, neighbours, distances.astype(np.int64)


def kept_codes(count: int, queries: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Which of ``count`` codes (numbered by first occurrence) are kept: those with no kept earlier code within
    range, decided in order. Only codes that have an earlier neighbour need the loop."""
    kept = np.ones(count, dtype=bool)
    earlier = neighbours < queries
    queries, neighbours = queries[earlier], neighbours[earlier]
    starts = np.flatnonzero(np.r_[True, queries[1:] != queries[:-1]]) if len(queries) else []
    for start, end in zip(starts, [*starts[1:], len(queries)]):
        kept[queries[start]] = not kept[neighbours[start:end]].any()
    return kept


@STEPS.register("phash_dedup")
class PhashDedup(GlobalStep):
    Config = PhashDedupConfig
    prepares = True

    def __init__(self, name: str, config: PhashDedupConfig):
        super().__init__(name, config)
        if config.hash_size < 2:
            raise ConfigError(f"config key 'hash_size' must be at least 2, got {config.hash_size}")
        if not 0 <= config.max_distance < config.hash_size ** 2:
            raise ConfigError(f"config key 'max_distance' must be in [0, {config.hash_size ** 2 - 1}] (the hash "
                              f"has {config.hash_size ** 2} bits), got {config.max_distance}")
        self.group_sizes: Counter = Counter()  # kept code -> images in its group, set by decide for summary

    @property
    def decode_size(self) -> int | None:
        # pHash shrinks the image to a (4 * hash_size)-pixel square first (imagehash's highfreq_factor)
        return 4 * self.config.hash_size if self.config.fast_decode else None

    def prepare(self, sample: Sample) -> np.ndarray:
        return phash_bits(sample.decoded(self.decode_size), self.config.hash_size)

    def thresholds(self) -> dict[str, list[float]]:
        return {"distance": [self.config.max_distance]}

    def signatures(self, samples: list[Sample]) -> np.ndarray:
        return np.stack([sample.inputs[self.name] if self.name in sample.inputs else self.prepare(sample)
                         for sample in samples])

    def decide(self, ids: list[tuple[int, str]], signatures) -> list[Verdict]:
        if not len(ids):
            return []
        # codes numbered by first occurrence, so that "earlier code" means "first seen earlier in input order"
        unique, first, inverse = np.unique(np.asarray(signatures), axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        first, codes_of = first[order], rank[inverse.reshape(-1)]
        queries, neighbours, distances = near_pairs(unique[order], self.config.max_distance)
        kept = kept_codes(len(first), queries, neighbours)
        limits = np.searchsorted(queries, np.arange(len(first) + 1))
        self.group_sizes = Counter(int(code) for code in np.flatnonzero(kept))
        verdicts = []
        for index, code in enumerate(codes_of):
            if kept[code] and first[code] == index:
                verdicts.append(keep())
                continue
            span = slice(limits[code], limits[code + 1])
            nearest, distance = self.nearest_kept(index, neighbours[span], distances[span], kept, first)
            self.group_sizes[nearest] += 1
            verdicts.append(drop("near_duplicate", distance=distance))
        return verdicts

    @staticmethod
    def nearest_kept(index: int, neighbours: np.ndarray, distances: np.ndarray, kept: np.ndarray,
                     first: np.ndarray) -> tuple[int, int]:
        """The kept code nearest to sample ``index`` among its neighbours that were kept before it (ties: the
        earliest), and the distance; a dropped sample always has one, or it would have been kept."""
        earlier = kept[neighbours] & (first[neighbours] < index)
        candidates, gaps = neighbours[earlier], distances[earlier]
        best = np.lexsort((first[candidates], gaps))[0]
        return int(candidates[best]), int(gaps[best])

    def summary(self, ids, signatures, verdicts: list[Verdict]) -> dict:
        groups = [size for size in self.group_sizes.values() if size > 1]
        return {"kept_images_with_near_duplicates": len(groups), "largest_group": max(groups, default=1)}
