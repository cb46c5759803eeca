"""``embedding_dedup``: drop semantic near-duplicates (SemDeDup; crops, edits, re-encodes): samples whose image
embedding has cosine similarity at least ``threshold`` with an earlier kept sample's. Walking in input order keeps
the first of each group; a dropped sample's score is its largest similarity to an earlier kept one.

Large sets are searched approximately (``vlp.recipes.steps.similarity``): ``buckets`` k-means buckets (default:
exact up to 20,000 samples, else about the square root of the count), each sample compared with the samples of its
nearest bucket, and the share of samples nearest a bucket boundary with those of the next one too (``probes``, the
buckets searched per sample on average). On 1M clustered 512-d embeddings the default 1.3 found 98.6% of the
near-duplicate pairs on one set (one probe 89%) and 92% on tools/bench_recipes.py's, in about 25 s on this repository's two-core machine when it is otherwise
idle, 70-100 s when other jobs load it. ``near_duplicates`` is the whole decision on an embeddings array.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlp.errors import ConfigError
from vlp.recipes.sample import Verdict, drop, keep
from vlp.recipes.steps import STEPS
from vlp.recipes.steps.embedding import ImageEmbeddingStep, ModelOptions
from vlp.recipes.steps.similarity import default_buckets, similar_pairs


@dataclass
class EmbeddingDedupConfig(ModelOptions):
    threshold: float = 0.95  # cosine similarity at which two images are near-duplicates
    buckets: int | None = None  # None: exact up to 20,000 samples, else about sqrt(samples); 1: exact
    probes: float = 1.3  # buckets searched per sample, on average: more finds more pairs, linearly slower
    seed: int = 0  # of the bucket k-means


def check_search_options(threshold: float, buckets: int | None, probes: float) -> None:
    if not -1 <= threshold <= 1:
        raise ConfigError(f"config key 'threshold' is a cosine similarity in [-1, 1], got {threshold}")
    if buckets is not None and buckets < 1:
        raise ConfigError(f"config key 'buckets' must be at least 1, got {buckets}")
    if probes < 1:
        raise ConfigError(f"config key 'probes' must be at least 1, got {probes}")


def near_duplicates(embeddings, threshold: float, buckets: int | None = None, probes: float = 1.3,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(kept [N] bool, similarity [N] float32) for embeddings [N, D] in input order: row i is dropped when its
    cosine similarity to an earlier kept row is at least ``threshold``; ``similarity[i]`` is the largest such (NaN
    for kept rows). ``buckets`` None: exact search up to 20,000 rows, else about sqrt(N) buckets."""
    count = len(embeddings)
    if not count:
        return np.ones(0, dtype=bool), np.empty(0, dtype=np.float32)
    pairs = similar_pairs(embeddings, embeddings, threshold, buckets or default_buckets(count), probes, seed)
    other = pairs.query != pairs.match
    first, second = pairs.query[other], pairs.match[other]
    # either direction of a pair may have been found (or both): the later row is the one that may go
    later, earlier, similarity = np.maximum(first, second), np.minimum(first, second), pairs.similarity[other]
    order = np.lexsort((earlier, later))
    later, earlier, similarity = later[order], earlier[order], similarity[order]
    kept = np.ones(count, dtype=bool)
    best = np.full(count, np.nan, dtype=np.float32)
    starts = np.flatnonzero(np.diff(later, prepend=-1))
    for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(later)]):
        alive = kept[earlier[start:end]]  # earlier rows are decided: this walk is in input order
        if alive.any():
            kept[later[start]] = False
            best[later[start]] = similarity[start:end][alive].max()
    return kept, best


@STEPS.register("embedding_dedup")
class EmbeddingDedup(ImageEmbeddingStep):
    Config = EmbeddingDedupConfig

    def __init__(self, name: str, config: EmbeddingDedupConfig):
        super().__init__(name, config)
        check_search_options(config.threshold, config.buckets, config.probes)

    def decide(self, ids: list[tuple[int, str]], signatures: np.ndarray) -> list[Verdict]:
        kept, similarity = near_duplicates(signatures, self.config.threshold, self.config.buckets,
                                           self.config.probes, self.config.seed)
        return [keep() if is_kept else drop("near_duplicate", similarity=score)
                for is_kept, score in zip(kept.tolist(), similarity.tolist())]

    def thresholds(self) -> dict[str, list[float]]:
        return {"similarity": [self.config.threshold]}

    def summary(self, ids, signatures: np.ndarray, verdicts: list[Verdict]) -> dict:
        buckets = self.config.buckets or default_buckets(len(verdicts))
        return {"samples": len(verdicts), "near_duplicates": sum(not verdict.keep for verdict in verdicts),
                "search": "exact" if (buckets or 1) == 1 else f"{buckets} buckets, {self.config.probes} probes"}
