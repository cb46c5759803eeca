"""Evaluation data from any dataset the training data layer reads (``vlp.data.open_sources``): manifests
(CSV/TSV/JSONL/Parquet), WebDataset shards, HF ``save_to_disk`` directories and caption folders.

One pass over the source in file order indexes the samples: captions (every usable caption of every caption
field), the label, and where the image is. Images are not decoded here: the split keeps a
:class:`~vlp.eval.loader.SourceImage` per image, read again by the embedding workers. Samples sharing a key
(manifest rows repeating an image path) are one image with all their captions. A sample whose reader already
knows it is unusable (a missing file, a truncated shard) is skipped and counted.
"""
from __future__ import annotations

import json
from pathlib import Path

from vlp.data import open_sources
from vlp.data.decode import BadSample
from vlp.errors import DataError
from vlp.data.pipeline import caption_candidates
from vlp.eval.loader import SourceImage

MAX_CAPTION_CHARS = 4096  # as data.captions.max_chars
EVAL_SPLITS = ("test", "validation", "val", "train")  # an HF DatasetDict's split to evaluate, first found


def eval_split(spec: str) -> str:
    """The split of an HF ``DatasetDict`` directory to evaluate: test, else validation, else train."""
    info = Path(spec) / "dataset_dict.json"
    if not info.is_file():
        return "test"  # only a DatasetDict has splits; every other format ignores this
    splits = json.loads(info.read_text()).get("splits", [])
    return next((name for name in EVAL_SPLITS if name in splits), splits[0] if splits else "test")


class SourceIndex:
    """Images, labels and captions collected sample by sample; samples with one key merge into one image."""

    def __init__(self):
        self.images: list[SourceImage] = []
        self.labels: list[int | None] = []
        self.captions: list[str] = []
        self.image_of_text: list[int] = []
        self.position: dict[tuple[int, str], int] = {}

    def add(self, source: int, ref, raw, name: str) -> None:
        index = self.position.get((source, raw.key))
        if index is None:
            index = self.position[(source, raw.key)] = len(self.images)
            self.images.append(SourceImage(source, ref, f"{name}:{raw.key}"))
            self.labels.append(raw.label)
        try:
            texts = [text for _, text in caption_candidates(raw.captions, MAX_CAPTION_CHARS)]
        except BadSample:
            texts = []  # an image without a usable caption still counts for classification
        self.captions += texts
        self.image_of_text += [index] * len(texts)


def _refs(source):
    """(ref, RawSample) of every sample in file order; (shard path, reason) where a shard's remainder is lost.
    ``vlp.data.iter_in_order``'s walk, keeping each sample's index or ShardRef for the workers to read again."""
    if source.indexed:
        for index in range(len(source)):
            yield index, source.raw(index)
        return
    for shard, path in enumerate(source.shards):
        for item in source.scan(shard):
            yield (path, item) if isinstance(item, str) else (item, source.read(item))


def index_sources(sources: list, limit: int | None, skipped: list[str]) -> SourceIndex:
    """The first ``limit`` images (all without a limit) of ``sources``; unusable samples go to ``skipped``."""
    found = SourceIndex()
    for number, source in enumerate(sources):
        for ref, raw in _refs(source):
            if isinstance(raw, str):
                skipped.append(f"{ref} ({raw})")
                continue
            if raw.bad:
                skipped.append(f"{source.name}:{raw.key} ({raw.bad})")
                continue
            if limit is not None and len(found.images) >= limit and (number, raw.key) not in found.position:
                return found
            found.add(number, ref, raw, source.name)
    return found


def _labels(found: SourceIndex, name: str) -> list[int] | None:
    """The images' labels; None when no image has one, an error when only some have."""
    missing = sum(label is None for label in found.labels)
    if missing == len(found.labels):
        return None
    if missing:
        raise DataError(f"{missing} of {len(found.labels)} images in {name} have no label")
    return [int(label) for label in found.labels]


def read_sources(spec: str, limit: int | None) -> tuple[SourceIndex, list[int] | None, list, list[str]]:
    """(the indexed images and captions, their labels, the sources, the samples skipped) of a spec that
    ``vlp.data.open_sources`` accepts."""
    sources, _ = open_sources(spec, "--data", split=eval_split(spec))
    skipped: list[str] = []
    found = index_sources(sources, limit, skipped)
    if not found.images:
        raise DataError(f"no usable evaluation sample in {spec}")
    return found, _labels(found, spec), sources, skipped
