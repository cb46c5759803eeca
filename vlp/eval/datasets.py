"""Evaluation data for ``vlp eval``: the embedded default set, an image folder, or a CSV.

A spec is read into an :class:`EvalData`: a test split, and for the probes a training split. Images stay
as PIL images (the default set) or paths (folder, CSV) and are decoded batch by batch while embedding, so a
large folder never has to fit in memory; an image that fails to decode is dropped then (see
:meth:`EvalSplit.keep`) and counted.

- ``default``: Fashion-MNIST's train split trains the probes, its val split is tested; one caption per image.
- a folder with one sub-folder per class: class names are the folder names with ``_`` read as a space; for
  the probes every 5th image (in sorted order, so the split is deterministic) is a test image.
- a ``.csv`` with an ``image`` column (a path relative to the CSV) and ``label`` and/or ``caption``: an image
  on several rows keeps every caption, which gives the 5-captions-per-image retrieval protocol.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from vlp.config import ConfigError
from vlp.data import load_default

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TEST_EVERY = 5  # a folder's or CSV's probe split: every 5th image is held out for testing


@dataclass
class EvalSplit:
    """Images with optional class labels and optional captions (``image_of_text[t]``: the image of caption t)."""

    images: list  # PIL images or paths
    labels: list[int] | None = None
    captions: list[str] | None = None
    image_of_text: list[int] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def keep(self, indices: list[int]) -> EvalSplit:
        """The split restricted to the images at ``indices``, their captions re-pointed to the new positions."""
        position = {old: new for new, old in enumerate(indices)}
        labels = [self.labels[i] for i in indices] if self.labels is not None else None
        if self.captions is None:
            return EvalSplit([self.images[i] for i in indices], labels)
        texts = [t for t, image in enumerate(self.image_of_text) if image in position]
        return EvalSplit([self.images[i] for i in indices], labels, [self.captions[t] for t in texts],
                         [position[self.image_of_text[t]] for t in texts])

    def every(self, step: int, offset: int) -> EvalSplit:
        """Every ``step``-th image starting at ``offset``."""
        return self.keep(list(range(offset, len(self), step)))


@dataclass
class EvalData:
    """What ``vlp eval`` reads from a data spec."""

    name: str
    test: EvalSplit
    train: EvalSplit | None = None  # the probes' training images; None where they come from ``test`` itself
    class_names: list[str] | None = None
    templates: list[str] | None = None  # the data's own zero-shot prompts, if it has some
    skipped: list[str] = field(default_factory=list)  # images that could not be read

    def probe_splits(self) -> tuple[EvalSplit, EvalSplit]:
        """(train, test) for the probes: the data's own split, else every 5th image held out."""
        if self.train is not None:
            return self.train, self.test
        return (self.test.keep([i for i in range(len(self.test)) if i % TEST_EVERY != TEST_EVERY - 1]),
                self.test.every(TEST_EVERY, TEST_EVERY - 1))


def open_image(source) -> Image.Image | None:
    """An RGB PIL image from a PIL image or a path; None when the file cannot be decoded."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    try:
        with Image.open(source) as image:
            return image.convert("RGB")  # convert() decodes fully, so a truncated file fails here, not later
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def read_default(limit: int | None) -> EvalData:
    """The embedded Fashion-MNIST set: train for the probes, val for testing."""
    def split(name: str) -> EvalSplit:
        data = load_default(name)
        count = len(data) if limit is None else min(limit, len(data))
        return EvalSplit([data.pil(i) for i in range(count)], [int(x) for x in data.labels[:count]],
                         list(data.captions[:count]), list(range(count)))

    val = load_default("val")
    return EvalData("default", split("val"), split("train"), list(val.class_names), list(val.templates))


def read_folder(root: Path, limit: int | None) -> EvalData:
    """One sub-folder per class; files sorted by name, so the probe split is the same on every run."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ConfigError(f"image folder {root} has no class sub-folders")
    images, labels = [], []
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        images += files
        labels += [label] * len(files)
    split = EvalSplit(images, labels)
    if limit is not None:
        split = split.every(math.ceil(len(split) / limit), 0)  # evenly spaced, so every class stays in
    return EvalData(str(root), split, class_names=[f.name.replace("_", " ") for f in folders])


def read_csv(path: Path, limit: int | None) -> EvalData:
    """Rows of ``image`` plus ``label`` and/or ``caption``; rows of one image are merged."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    if "image" not in columns or not columns & {"label", "caption"}:
        raise ConfigError(f"{path} needs an 'image' column and a 'label' or 'caption' column; has {sorted(columns)}")
    image_index: dict[str, int] = {}
    image_label: dict[int, str] = {}
    captions, image_of_text = [], []
    for row in rows:
        index = image_index.setdefault(row["image"], len(image_index))
        if limit is not None and index >= limit:
            continue
        if row.get("label"):
            image_label[index] = row["label"]
        if row.get("caption"):
            captions.append(row["caption"])
            image_of_text.append(index)
    images = [path.parent / name for name, i in image_index.items() if limit is None or i < limit]
    class_names = sorted(set(image_label.values())) or None
    labels = [class_names.index(image_label[i]) for i in range(len(images))] if class_names else None
    if class_names and len(image_label) != len(images):
        raise ConfigError(f"{path}: some images have no label")
    split = EvalSplit(images, labels, captions or None, image_of_text if captions else None)
    return EvalData(str(path), split, class_names=class_names)


def read_eval_data(spec: str, limit: int | None = None) -> EvalData:
    """``default``, an image folder, or a ``.csv``; at most ``limit`` images per split."""
    if spec == "default":
        return read_default(limit)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {spec}")
    if path.is_dir():
        return read_folder(path, limit)
    if path.suffix.lower() == ".csv":
        return read_csv(path, limit)
    raise ConfigError(f"cannot read data '{spec}'; valid: default, an image folder, or a .csv file")


def drop_unreadable(split: EvalSplit, readable: list[int], skipped: list[str]) -> EvalSplit:
    """``split`` without the images outside ``readable``, whose paths are added to ``skipped``."""
    kept = set(readable)
    skipped += [str(split.images[i]) for i in range(len(split)) if i not in kept]
    return split.keep(readable) if len(kept) < len(split) else split


__all__ = ["EvalData", "EvalSplit", "drop_unreadable", "open_image", "read_eval_data"]
