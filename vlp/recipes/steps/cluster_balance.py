"""``cluster_balance``: flatten the head of the data's distribution, as MetaCLIP balances its concepts and DINOv2's
curation balances its k-means clusters. Spherical k-means (faiss, seeded) splits the image embeddings into
``clusters``; each cluster keeps at most ``per_cluster`` samples, or, with ``total``, at most the largest equal cap
that keeps no more than ``total`` in all. Which samples a full cluster keeps: the first in input order, or with
``prefer: STEP.SCORE`` those with the highest score an earlier step recorded (``clip_score.clip_score``, say),
ties in input order; a sample without that score comes last. Every sample's cluster is recorded as its score
``cluster``; the summary has every cluster's size before and after."""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict, drop, keep
from vlp.recipes.steps import STEPS
from vlp.recipes.steps.embedding import ImageEmbeddingStep, ModelOptions
from vlp.recipes.steps.similarity import as_vectors

KMEANS_ITERATIONS = 20


@dataclass
class ClusterBalanceConfig(ModelOptions):
    clusters: int = 100  # k-means clusters of the image embeddings (fewer when there are fewer samples)
    per_cluster: int | None = None  # keep at most this many samples per cluster
    total: int | None = None  # or: the largest equal per-cluster cap keeping at most this many in all
    prefer: str | None = None  # None: keep the first in input order; STEP.SCORE: the highest such score first
    seed: int = 0  # of the k-means


def check_config(config: ClusterBalanceConfig) -> None:
    if config.clusters < 1:
        raise ConfigError(f"config key 'clusters' must be at least 1, got {config.clusters}")
    if (config.per_cluster is None) == (config.total is None):
        raise ConfigError("set one of 'per_cluster' and 'total'")
    for key in ("per_cluster", "total"):
        if getattr(config, key) is not None and getattr(config, key) < 0:
            raise ConfigError(f"config key '{key}' must be at least 0, got {getattr(config, key)}")
    if config.prefer is not None and config.prefer.count(".") != 1:
        raise ConfigError(f"config key 'prefer' names a score as STEP.SCORE (e.g. clip_score.clip_score), got "
                          f"'{config.prefer}'")


def cluster_of(embeddings: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """Each row's spherical k-means cluster, [N] int64."""
    vectors = as_vectors(embeddings)
    kmeans = faiss.Kmeans(vectors.shape[1], min(clusters, len(vectors)), niter=KMEANS_ITERATIONS, seed=seed,
                          spherical=True)
    kmeans.train(vectors)
    return kmeans.index.search(vectors, 1)[1][:, 0]


def largest_cap(sizes: np.ndarray, total: int) -> int:
    """The largest cap c with sum(min(size, c)) <= total."""
    low, high = 0, int(sizes.max(initial=0))
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if np.minimum(sizes, middle).sum() <= total else (low, middle - 1)
    return low


def capped(cluster: np.ndarray, preference: np.ndarray, cap: int) -> np.ndarray:
    """Which rows stay: in each cluster the ``cap`` with the highest preference, ties (and NaNs, last) by row."""
    rows = np.arange(len(cluster))
    order = np.lexsort((rows, -np.nan_to_num(preference, nan=-np.inf), cluster))
    starts = np.searchsorted(cluster[order], cluster[order], side="left")
    kept = np.zeros(len(cluster), dtype=bool)
    kept[order[rows - starts < cap]] = True
    return kept


@STEPS.register("cluster_balance")
class ClusterBalance(ImageEmbeddingStep):
    Config = ClusterBalanceConfig

    def __init__(self, name: str, config: ClusterBalanceConfig):
        super().__init__(name, config)
        check_config(config)
        self.found: dict = {}  # what decide saw, for the summary

    def signatures(self, samples: list[Sample]) -> np.ndarray:
        """The image embeddings with the preference score as a last column (0 without ``prefer``)."""
        preference = np.array([[self.preference(sample)] for sample in samples], dtype=np.float32)
        return np.hstack([super().signatures(samples), preference])

    def preference(self, sample: Sample) -> float:
        if self.config.prefer is None:
            return 0.0
        step, score = self.config.prefer.split(".")
        recorded = sample.json.get("scores")
        by_step = recorded.get(step) if isinstance(recorded, dict) else None  # key.json is the input's: check it
        value = by_step.get(score) if isinstance(by_step, dict) else None
        return float(value) if isinstance(value, (int, float)) else float("nan")

    def decide(self, ids: list[tuple[int, str]], signatures: np.ndarray) -> list[Verdict]:
        if not len(ids):
            return []
        cluster = cluster_of(signatures[:, :-1], self.config.clusters, self.config.seed)
        sizes = np.bincount(cluster, minlength=min(self.config.clusters, len(ids)))
        cap = self.config.per_cluster if self.config.total is None else largest_cap(sizes, self.config.total)
        kept = capped(cluster, signatures[:, -1], cap)
        self.found = {"clusters": len(sizes), "cap": cap, "sizes_before": sizes.tolist(),
                      "sizes_after": np.bincount(cluster[kept], minlength=len(sizes)).tolist(),
                      "missing_preference": int(np.isnan(signatures[:, -1]).sum())}
        return [keep(cluster=c) if is_kept else drop("cluster_cap", cluster=c)
                for c, is_kept in zip(cluster.tolist(), kept.tolist())]

    def summary(self, ids, signatures, verdicts: list[Verdict]) -> dict:
        return {"samples": len(verdicts), "kept": sum(verdict.keep for verdict in verdicts), **self.found}
