"""Evaluation data for ``vlp eval``: the embedded default set, a class folder, or any dataset the training data
layer reads.

A spec is read into an :class:`EvalData`: a test split, and for the probes a training split. Images stay
references (in-memory PIL images, paths, or samples of a ``vlp.data`` source) and are decoded batch by batch in
DataLoader workers while embedding (``vlp.eval.loader``), so a large dataset never has to fit in memory; an
image that fails to decode is dropped then (see :meth:`EvalSplit.keep`) and counted.

- ``default``: Fashion-MNIST's train split trains the probes, its val split is tested; one caption per image.
- a folder with one sub-folder per class (ImageNet's and torchvision ``ImageFolder``'s layout): class names are
  the folder names, sorted, with ``_`` read as a space.
- anything ``vlp.data.open_sources`` reads (``vlp.eval.sources``): a CSV/TSV/JSONL/Parquet manifest, WebDataset
  shards (``a/{000..009}.tar``), an HF ``save_to_disk`` directory (its ``test`` split, else ``validation``,
  else ``train``), a folder with ``IMAGE.txt`` captions. Captions are every caption of the format's caption
  field (a list column gives several per image; manifest rows repeating an image path are one image), which
  gives the 5-captions retrieval protocol. Labels are a ``label`` column (class indices, or class names, which
  are then sorted into the classes), an HF ``ClassLabel``, or a WebDataset ``KEY.cls``. ``--limit`` keeps the
  first images in file order.

Class names, as clip_benchmark and torchvision number them: ``--classes FILE``, else ``classnames.txt`` or
``classes.txt`` in the data's folder or the folder above it, one name a line in label order (line 1 is label
0), replacing the names the data carries (e.g. ImageNet's synset folders); else those names. Integer labels
without names suffice for the probes; zero-shot needs names. Without its own split, the probes hold out every
5th image (in file order, so the split is deterministic) for testing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from vlp.config import ConfigError
from vlp.data import load_default
from vlp.data.sources import infer_type
from vlp.data.sources.folder import IMAGE_SUFFIXES
from vlp.eval.sources import read_sources

TEST_EVERY = 5  # the probe split of data without one: every 5th image is held out for testing
CLASS_FILES = ("classnames.txt", "classes.txt")  # clip_benchmark's name first


@dataclass
class EvalSplit:
    """Images with optional class labels and optional captions (``image_of_text[t]``: the image of caption t)."""

    images: list  # PIL images, paths, or vlp.eval.loader.SourceImage
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
    sources: list = field(default_factory=list)  # the vlp.data sources that SourceImage entries point into

    def probe_splits(self) -> tuple[EvalSplit, EvalSplit]:
        """(train, test) for the probes: the data's own split, else every 5th image held out."""
        if self.train is not None:
            return self.train, self.test
        return (self.test.keep([i for i in range(len(self.test)) if i % TEST_EVERY != TEST_EVERY - 1]),
                self.test.every(TEST_EVERY, TEST_EVERY - 1))


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


def read_source_data(spec: str, limit: int | None) -> EvalData:
    """Any spec ``vlp.data.open_sources`` accepts (see ``vlp.eval.sources``): the first ``limit`` images."""
    found, labels, sources, skipped = read_sources(spec, limit)
    captions = found.captions or None
    split = EvalSplit(found.images, labels, captions, found.image_of_text if captions else None)
    names, templates = (sources[0].class_names, sources[0].templates) if len(sources) == 1 else (None, None)
    return EvalData(spec, split, class_names=names, templates=templates, skipped=skipped, sources=sources)


def _is_class_folder(path: Path) -> bool:
    """A directory of one sub-folder per class: not an HF dataset, and no image has a caption file beside it."""
    if infer_type(str(path)) != "folder":
        return False
    return not any(p.suffix.lower() in IMAGE_SUFFIXES and p.with_suffix(".txt").is_file() for p in path.rglob("*"))


def classes_file(spec: str, given: str | None) -> Path | None:
    """``--classes``, else the first of CLASS_FILES in the data's folder or the folder above it."""
    if given is not None:
        if not Path(given).is_file():
            raise ConfigError(f"--classes: file not found: {given}")
        return Path(given)
    if spec == "default":
        return None
    folder = Path(spec) if Path(spec).is_dir() else Path(spec.split("::")[0]).parent
    return next((base / name for base in (folder, folder.parent) for name in CLASS_FILES
                 if (base / name).is_file()), None)


def with_class_names(data: EvalData, file: Path | None, given: bool) -> EvalData:
    """``data`` with its classes named by ``file`` (one name a line, in label order), which must name every
    class; a class file found beside data without labels is ignored, a given one is an error."""
    labels = data.test.labels
    if file is None or (labels is None and not given):
        return data
    if labels is None:
        raise ConfigError(f"--classes {file}: data '{data.name}' has no labels")
    names = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if data.class_names is not None and len(names) != len(data.class_names):
        raise ConfigError(f"{file} names {len(names)} classes; data '{data.name}' has {len(data.class_names)}")
    if len(names) <= max(labels):
        raise ConfigError(f"{file} names {len(names)} classes; data '{data.name}' has label {max(labels)}")
    data.class_names = names
    return data


def read_eval_data(spec: str, limit: int | None = None, classes: str | None = None) -> EvalData:
    """``default``, a class folder, or any spec ``vlp.data.open_sources`` accepts; at most ``limit`` images
    per split; classes named by ``classes`` (a file) or a class file beside the data."""
    if spec == "default":
        data = read_default(limit)
    elif not any(mark in spec for mark in "{*?") and "::" not in spec and not Path(spec).exists():
        raise FileNotFoundError(f"data not found: {spec}")
    elif Path(spec).is_dir() and _is_class_folder(Path(spec)):
        data = read_folder(Path(spec), limit)
    else:
        data = read_source_data(spec, limit)
    return with_class_names(data, classes_file(spec, classes), classes is not None)


def drop_unreadable(split: EvalSplit, readable: list[int], skipped: list[str]) -> EvalSplit:
    """``split`` without the images outside ``readable``, whose paths are added to ``skipped``."""
    kept = set(readable)
    skipped += [str(split.images[i]) for i in range(len(split)) if i not in kept]
    return split.keep(readable) if len(kept) < len(split) else split


__all__ = ["EvalData", "EvalSplit", "drop_unreadable", "read_eval_data"]
