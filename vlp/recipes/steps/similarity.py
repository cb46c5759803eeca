"""Pairs of L2-normalized embeddings whose cosine similarity is at least a threshold: the search under embedding
dedup and decontamination.

Small databases are searched exactly (faiss ``IndexFlatIP.range_search``). Large ones are searched IVF-style: a
faiss k-means splits the database into ``buckets``, each query is compared with the database vectors of its
nearest bucket(s), and within a bucket every similarity is computed, as one matrix product per bucket. faiss' own
IVF range search scans its lists one query at a time (about 2.5 GFLOP/s on two cores here); the per-bucket
products, run on one thread each with the buckets spread over the cores, reach ten times that, which is what
brings 1M × 512-d within two minutes. The buckets are found in a PCA projection to ``COARSE_DIM`` dimensions, so
that the k-means and the bucket assignment of a million vectors take seconds; similarities always use the full
embeddings.

The trade-off is recall: a pair is missed when its two vectors fall in different buckets and neither searches the
other's. Such vectors lie near a bucket boundary, so ``probes`` (the buckets searched per query, on average) is
spent there: with ``probes = 1.3`` every query searches its nearest bucket and the 30% of queries closest to a
boundary (the smallest gap between the distances to their nearest and next-nearest centroid) also search their
second. Measured on 1M clustered 512-d vectors with 1000 buckets and planted near-duplicate pairs: 1 probe finds
89% of the pairs, 1.3 finds 98.6% (as many as 2; 92% on tools/bench_recipes.py's data, where 2 find 95%),
``probes == buckets`` all (it is the exact search); the search
time grows linearly with ``probes``. Finer data (fewer vectors per bucket) loses less.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

EXACT_UP_TO = 20_000  # database vectors searched exactly when no bucket count is given: ~10 s at 512-d
COARSE_DIM = 64  # dimensions the buckets are found in: 32 loses recall, 128 doubles the k-means and assignment
TRAIN_PER_BUCKET = 40  # k-means training vectors per bucket (faiss warns below 39)
KMEANS_ITERATIONS = 10  # the buckets need not be tight clusters, only about even in size
QUERY_BLOCK = 4096  # queries per matrix product: bounds the memory of an oversized bucket's product


@dataclass
class Pairs:
    """Matches: ``query[i]`` is similar to database row ``match[i]`` with cosine ``similarity[i]``."""

    query: np.ndarray
    match: np.ndarray
    similarity: np.ndarray


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def as_vectors(embeddings) -> np.ndarray:
    """A C-contiguous float32 copy, as faiss wants it, L2-normalized so that inner product is cosine."""
    vectors = np.array(embeddings, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(vectors)
    return vectors


def default_buckets(database_size: int) -> int | None:
    """None (exact search) for a small database, else about sqrt(n) buckets of about sqrt(n) vectors."""
    return None if database_size <= EXACT_UP_TO else round(math.sqrt(database_size))


def joined(found: list[Pairs]) -> Pairs:
    if not found:
        return Pairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    return Pairs(*(np.concatenate([getattr(pairs, name) for pairs in found])
                   for name in ("query", "match", "similarity")))


def exact_pairs(queries: np.ndarray, database: np.ndarray, threshold: float) -> Pairs:
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    # faiss keeps inner products strictly above the radius: one float below it keeps those equal to the threshold
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    limits, similarity, match = index.range_search(queries, radius)
    return Pairs(np.repeat(np.arange(len(queries)), np.diff(limits).astype(np.int64)), match, similarity)


class Buckets:
    """A k-means partition of a database in a PCA projection; the same data and ``seed`` give the same buckets."""

    def __init__(self, database: np.ndarray, count: int, seed: int):
        rng = np.random.default_rng(seed)
        size = min(len(database), count * TRAIN_PER_BUCKET)
        sample = database[np.sort(rng.choice(len(database), size, replace=False))]
        self.pca = None
        if database.shape[1] > COARSE_DIM:
            self.pca = faiss.PCAMatrix(database.shape[1], COARSE_DIM)  # orthonormal: distances only shrink
            self.pca.train(sample)
            sample = self.pca.apply(sample)
        kmeans = faiss.Kmeans(sample.shape[1], count, niter=KMEANS_ITERATIONS, seed=seed,
                              max_points_per_centroid=TRAIN_PER_BUCKET)
        kmeans.train(sample)
        self.centroids = faiss.IndexFlatL2(sample.shape[1])
        self.centroids.add(kmeans.centroids)

    def nearest(self, vectors: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, buckets) of each vector's ``count`` nearest buckets, nearest first, [n, count] each."""
        projected = vectors if self.pca is None else self.pca.apply(vectors)
        squared, buckets = self.centroids.search(projected, count)
        return np.sqrt(np.maximum(squared, 0)), buckets


def probed(distances: np.ndarray, buckets: np.ndarray, probes: float) -> tuple[np.ndarray, np.ndarray]:
    """(query, bucket) of every search: each query's ``floor(probes)`` nearest buckets, and one more for the
    ``probes - floor(probes)`` share of queries nearest a boundary (the smallest distance gap to that bucket)."""
    whole = int(probes)
    queries = np.repeat(np.arange(len(buckets)), whole)
    searched = buckets[:, :whole].ravel()
    if whole < buckets.shape[1]:
        gap = distances[:, whole] - distances[:, 0]
        extra = np.sort(np.argsort(gap, kind="stable")[:round((probes - whole) * len(buckets))])
        queries, searched = np.concatenate([queries, extra]), np.concatenate([searched, buckets[extra, whole]])
    return queries, searched


def grouped(labels: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions sorted by label, start of each label's run in them): group ``g`` is
    ``order[starts[g]:starts[g + 1]]``."""
    order = np.argsort(labels, kind="stable")
    return order, np.searchsorted(labels[order], np.arange(groups + 1))


def bucket_pairs(queries: np.ndarray, database: np.ndarray, asking: np.ndarray, rows: np.ndarray,
                 threshold: float) -> Pairs:
    """The exact search within one bucket: the queries ``asking`` against the database ``rows``."""
    members, found = database[rows], []
    for start in range(0, len(asking), QUERY_BLOCK):
        block = asking[start:start + QUERY_BLOCK]
        similarity = queries[block] @ members.T
        query, match = np.nonzero(similarity >= np.float32(threshold))
        found.append(Pairs(block[query], rows[match], similarity[query, match]))
    return joined(found)


def bucketed_pairs(queries: np.ndarray, database: np.ndarray, threshold: float, buckets: int, probes: float,
                   seed: int) -> Pairs:
    partition = Buckets(database, buckets, seed)
    distances, nearest = partition.nearest(queries, min(math.ceil(probes), buckets))
    # a set searched against itself (dedup) is assigned once
    homes = nearest[:, 0] if queries is database else partition.nearest(database, 1)[1][:, 0]
    members, member_starts = grouped(homes, buckets)
    asking, searched = probed(distances, nearest, probes)
    order, asker_starts = grouped(searched, buckets)
    askers = asking[order]

    def search(bucket: int) -> Pairs:
        return bucket_pairs(queries, database, askers[asker_starts[bucket]:asker_starts[bucket + 1]],
                            members[member_starts[bucket]:member_starts[bucket + 1]], threshold)

    # buckets in parallel, each product on one thread: one bucket's product is too small to split across cores
    # without the threads waiting on each other, worst when other processes share the cores
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(cores()) as pool:
        return joined(list(pool.map(search, range(buckets))))


def similar_pairs(queries, database, threshold: float, buckets: int | None = None, probes: float = 1.0,
                  seed: int = 0) -> Pairs:
    """Every (query, database row) pair with cosine similarity at least ``threshold``, both given as [n, d]
    arrays. ``buckets``: None (or 1) searches exactly; more search IVF-style, each query searching ``probes``
    buckets on average (see the module docstring). Pass the same array twice to search a set against itself."""
    same = queries is database
    queries = as_vectors(queries)
    database = queries if same else as_vectors(database)
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries are {queries.shape[1]}-d and the database {database.shape[1]}-d")
    if buckets is None or buckets <= 1 or not len(database) or not len(queries):
        return exact_pairs(queries, database, threshold)
    return bucketed_pairs(queries, database, threshold, min(buckets, len(database)), probes, seed)
