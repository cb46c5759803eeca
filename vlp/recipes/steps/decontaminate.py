"""``decontaminate``: drop training samples whose image is a near-duplicate of an evaluation image (cosine
similarity of the image embeddings at least ``threshold``), so that zero-shot and retrieval numbers measured on
that set stay honest. The evaluation images come from ``eval_data`` (any spec ``vlp eval --data`` accepts, read by
``vlp.eval``'s readers, its test split) embedded with the step's model, and/or ``eval_embeddings`` (``.npy`` files
of [N, D] image embeddings made with the same model). A dropped sample's score is its largest similarity to an
evaluation image. The search is ``embedding_dedup``'s: exact, or bucketed over the evaluation set when that is
large (``buckets``, ``probes``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlp.errors import ConfigError
from vlp.recipes.sample import Verdict, drop, keep
from vlp.recipes.steps import STEPS, core_threads
from vlp.recipes.steps.embedding import Encoder, ImageEmbeddingStep, ModelOptions
from vlp.recipes.steps.embedding_dedup import check_search_options
from vlp.recipes.steps.similarity import default_buckets, similar_pairs


@dataclass
class DecontaminateConfig(ModelOptions):
    eval_data: list[str] = field(default_factory=list)  # e.g. [/data/imagenet/val, "/data/coco/{0..4}.tar"]
    eval_embeddings: list[str] = field(default_factory=list)  # .npy files, [N, D], made with the same model
    threshold: float = 0.9  # cosine similarity at which a training image counts as an evaluation image
    buckets: int | None = None  # over the evaluation images; None: exact up to 20,000, else about sqrt(count)
    probes: float = 1.3  # buckets searched per sample, on average (see embedding_dedup)
    seed: int = 0


def check_eval_options(config: DecontaminateConfig) -> None:
    if not config.eval_data and not config.eval_embeddings:
        raise ConfigError("set 'eval_data' (evaluation sets, as vlp eval --data takes them) and/or "
                          "'eval_embeddings' (.npy files)")
    for spec in config.eval_data:  # patterns and '::' lists are checked when read, as vlp eval checks them
        if spec != "default" and not any(mark in spec for mark in "{*?:") and not Path(spec).exists():
            raise ConfigError(f"config key 'eval_data': not found: {spec}")
    for path in config.eval_embeddings:
        if not Path(path).is_file():
            raise ConfigError(f"config key 'eval_embeddings': not found: {path}")


def embed_eval_data(encoder: Encoder, spec: str, batch_size: int) -> tuple[np.ndarray, int]:
    """(embeddings of the readable test images of ``spec``, how many images could not be read). Decoded as the
    training samples are (``fast_decode``), so that an evaluation image and its copy embed alike."""
    from vlp.data.decode import BadSample  # vlp.data and vlp.eval import torch: not when the recipe loads
    from vlp.eval.datasets import read_eval_data
    from vlp.eval.loader import load_image

    data = read_eval_data(spec)

    def readable(item):
        try:
            return load_image(item, data.sources, encoder.draft_size)
        except BadSample:
            return None

    images, parts = data.test.images, []
    for start in range(0, len(images), batch_size):
        batch = core_threads().map(readable, images[start:start + batch_size])
        decoded = [image for image in batch if image is not None]
        if decoded:
            parts.append(encoder.pil_images(decoded))
    embedded = sum(len(part) for part in parts)
    unreadable = len(data.skipped) + len(images) - embedded
    return (np.concatenate(parts) if parts else np.empty((0, 0), np.float32)), unreadable


def load_embeddings(path: str, dim: int) -> np.ndarray:
    embeddings = np.load(path)
    if embeddings.ndim != 2 or embeddings.shape[1] != dim or not np.issubdtype(embeddings.dtype, np.floating):
        raise ConfigError(f"config key 'eval_embeddings': {path} holds a {embeddings.dtype} array of shape "
                          f"{embeddings.shape}; the model's image embeddings are [N, {dim}] floats")
    return embeddings


@STEPS.register("decontaminate")
class Decontaminate(ImageEmbeddingStep):
    Config = DecontaminateConfig

    def __init__(self, name: str, config: DecontaminateConfig):
        super().__init__(name, config)
        check_search_options(config.threshold, config.buckets, config.probes)
        check_eval_options(config)
        self.found: dict = {}  # what decide saw, for the summary

    def eval_set(self, dim: int) -> np.ndarray:
        parts, unreadable = [], 0
        for spec in self.config.eval_data:
            embeddings, missed = embed_eval_data(self.encoder, spec, self.config.batch_size)
            parts.append(embeddings.reshape(-1, dim))
            unreadable += missed
        parts += [load_embeddings(path, dim) for path in self.config.eval_embeddings]
        self.found.update(eval_images=sum(len(part) for part in parts), eval_unreadable=unreadable)
        return np.concatenate(parts).astype(np.float32)

    def decide(self, ids: list[tuple[int, str]], signatures: np.ndarray) -> list[Verdict]:
        if not len(ids):
            return []
        evaluation = self.eval_set(signatures.shape[1])
        buckets = self.config.buckets or default_buckets(len(evaluation))
        pairs = similar_pairs(signatures, evaluation, self.config.threshold, buckets, self.config.probes,
                              self.config.seed)
        best = np.full(len(ids), -np.inf, dtype=np.float32)
        np.maximum.at(best, pairs.query, pairs.similarity)
        self.found["eval_images_matched"] = len(np.unique(pairs.match))
        return [keep() if score == -np.inf else drop("eval_duplicate", similarity=score) for score in best.tolist()]

    def thresholds(self) -> dict[str, list[float]]:
        return {"similarity": [self.config.threshold]}

    def summary(self, ids, signatures, verdicts: list[Verdict]) -> dict:
        return {"samples": len(verdicts), "eval_duplicates": sum(not verdict.keep for verdict in verdicts),
                **self.found}
