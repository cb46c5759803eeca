"""Data: sources (formats), the resumable training stream, per-sample preparation and evaluation sets.

``build_train_stream`` is what the training loop calls; ``load_eval_set`` reads a held-out set and
``read_captions`` a caption sample (to train a tokenizer).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterator

from vlp.config import DataConfig, source_configs
from vlp.data.decode import BAD_REASONS, BadSample, decode_image
from vlp.errors import DataError
from vlp.data.default_data import CLASS_NAMES, ZERO_SHOT_TEMPLATES, CaptionedImages, load_default
from vlp.data.pipeline import CollateBatch, PrepareSample, caption_candidates
from vlp.data.sources import RawSample, ShardRef, Source, build_source
from vlp.data.stream import StreamPosition, TrainStream
from vlp.data.transforms import TrainViews

PROBE_SAMPLES = 64


def open_sources(spec, key: str = "data.train", split: str = "train") -> tuple[list[Source], list[float]]:
    configs = source_configs(spec, key)
    for cfg in configs:
        if split != "train" and cfg.split == "train":
            cfg.split = split
    return [build_source(cfg) for cfg in configs], [cfg.weight for cfg in configs]


def iter_in_order(source: Source) -> Iterator[RawSample | str]:
    """A source's samples in file order (no shuffling): for evaluation, inspection and conversion."""
    if source.indexed:
        for index in range(len(source)):
            yield source.raw(index)
        return
    for shard in range(len(source.shards)):
        for item in source.scan(shard):
            yield item if isinstance(item, str) else source.read(item)


def dataset_size(sources: list[Source]) -> int:
    """Exact sample count (sizes.json / stats files where shards have them, else a header scan)."""
    return sum(len(s) if s.indexed else sum(s.shard_sizes()) for s in sources)


def probe(sources: list[Source], prepare: PrepareSample) -> None:
    """Fail before training when a source's first samples are all unusable, naming the path and the reasons."""
    for source in sources:
        reasons: Counter = Counter()
        for count, raw in enumerate(iter_in_order(source)):
            if count == PROBE_SAMPLES:
                break
            try:
                if isinstance(raw, str) or raw.bad:
                    raise BadSample(raw if isinstance(raw, str) else raw.bad)
                prepare(raw, count)
                break
            except BadSample as bad:
                reasons[bad.reason] += 1
        else:  # the source ended before a usable sample
            detail = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) or "it holds no samples"
            raise DataError(f"no usable sample in {source.name}: {detail}")
        if sum(reasons.values()) == PROBE_SAMPLES:
            detail = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
            raise DataError(f"the first {PROBE_SAMPLES} samples of {source.name} are all unusable: {detail}")


def build_train_stream(data: DataConfig, visual, tokenizer, seed: int, rank: int, world_size: int,
                       position: StreamPosition, sources: tuple[list[Source], list[float]] | None = None
                       ) -> TrainStream:
    """The training stream of ``data.train`` (or of ``sources``, already opened), resuming at ``position``."""
    sources, weights = sources or open_sources(data.train)
    prepare = PrepareSample(TrainViews(visual, data.augment, data.views), data.captions, data.max_pixels,
                            data.fast_decode)
    probe(sources, prepare)
    collate = CollateBatch(tokenizer, data.captions.max_per_image if data.captions.policy == "all" else None)
    return TrainStream(sources, weights, prepare, collate, data.batch_size, seed, rank, world_size,
                       data.num_workers, data.shuffle_buffer, position.workers, position.batches)


def load_eval_set(spec, limit: int, max_pixels: int = 64_000_000) -> CaptionedImages:
    """The first ``limit`` usable samples of ``spec`` (in file order), one caption each; bad ones are skipped."""
    if spec == "default":
        return load_default("val")
    sources, _ = open_sources(spec, "data.val", split="validation")
    images, captions, labels = [], [], []
    with_labels = len(sources) == 1 and sources[0].class_names is not None
    for source in sources:
        for raw in iter_in_order(source):
            if len(images) >= limit:
                break
            if isinstance(raw, str) or raw.bad:
                continue
            try:
                caption = caption_candidates(raw.captions, 4096)[0][1]
                images.append(decode_image(raw.image, max_pixels))
            except BadSample:
                continue
            captions.append(caption)
            labels.append(raw.label)
    if not images:
        raise DataError(f"no usable evaluation sample in {spec}")
    class_names = sources[0].class_names if with_labels else None
    return CaptionedImages(images, labels if with_labels else None, captions, class_names,
                           sources[0].templates if with_labels else None)


def read_captions(spec, limit: int = 200_000) -> list[str]:
    """Up to ``limit`` captions of ``spec`` in file order, e.g. to train a tokenizer on."""
    if spec == "default":
        return list(load_default("train").captions[:limit])
    texts: list[str] = []
    for source in open_sources(spec)[0]:
        for raw in iter_in_order(source):
            if len(texts) >= limit:
                return texts
            if isinstance(raw, str):
                continue
            try:
                texts += [text for _, text in caption_candidates(raw.captions, 4096)]
            except BadSample:
                continue
    if not texts:
        raise DataError(f"no usable caption in {spec}")
    return texts


__all__ = ["BAD_REASONS", "CLASS_NAMES", "ZERO_SHOT_TEMPLATES", "BadSample", "CaptionedImages", "DataError",
           "RawSample", "ShardRef", "StreamPosition", "build_train_stream", "dataset_size", "iter_in_order", "load_default",
           "load_eval_set", "open_sources", "read_captions"]
