"""Datasets a run can read, one module per format, registered in ``SOURCES``.

Two kinds, by how they can be read:

- indexed sources (manifests, HF datasets, image folders, the embedded set) know their length and read any
  sample by index, so a run permutes them exactly;
- shard sources (WebDataset tar shards) are read shard by shard, in order, through a shuffle buffer.

Either way a source hands out :class:`RawSample` s: undecoded image bytes (or a PIL image) and raw caption
fields. Decoding, cleaning and skipping bad samples happen in :mod:`vlp.data.stream`, in the workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from vlp.config import ConfigError, SourceConfig
from vlp.utils import Registry

SOURCES: Registry = Registry("data source type")


@dataclass
class RawSample:
    key: str
    image: object  # bytes, a PIL image, or None when the pair has no image
    captions: dict[str, object] = field(default_factory=dict)  # field -> text (str/bytes) or list of texts
    label: int | None = None
    bad: str | None = None  # set when the reader already knows the sample is unusable (e.g. a missing file)


class Source:
    """Base of every format: ``name`` for messages, optional class names and prompt templates for zero-shot."""

    indexed = True
    class_names: list[str] | None = None
    templates: list[str] | None = None

    def __init__(self, cfg: SourceConfig):
        self.cfg, self.name = cfg, cfg.path

    def __len__(self) -> int:
        raise NotImplementedError

    def raw(self, index: int) -> RawSample:
        raise NotImplementedError


@dataclass(frozen=True)
class ShardRef:
    """One sample inside a tar shard: where each of its members' bytes are."""

    shard: int  # index into the source's shard list
    key: str
    members: tuple[tuple[str, int, int], ...]  # (extension, data offset, size)


class ShardSource(Source):
    indexed = False
    shards: list[str]

    def scan(self, shard: int) -> Iterator[ShardRef | str]:
        """The samples of shard ``shard`` in file order; a string is the reason a shard's remainder is lost."""
        raise NotImplementedError

    def read(self, ref: ShardRef) -> RawSample:
        raise NotImplementedError

    def shard_sizes(self) -> list[int]:
        raise NotImplementedError


def infer_type(path: str) -> str:
    """The source type a path most likely is; names the path when it matches nothing."""
    if path == "default":
        return "default"
    if ".tar" in path and ("{" in path or "*" in path or path.endswith(".tar")):
        return "webdataset"
    target = Path(path)
    if target.suffix.lower() in {".csv", ".tsv", ".jsonl", ".json", ".parquet"}:
        return "manifest"
    if target.is_dir():
        markers = ("dataset_info.json", "dataset_dict.json", "state.json")
        return "hf" if any((target / m).is_file() for m in markers) else "folder"
    if not target.exists():
        raise ConfigError(f"data path not found: {path}")
    raise ConfigError(f"cannot tell what kind of dataset {path} is; set its type ({', '.join(SOURCES.names())})")


def build_source(cfg: SourceConfig) -> Source:
    kind = cfg.type or infer_type(cfg.path)
    try:
        factory = SOURCES.get(kind)
    except KeyError as err:
        raise ConfigError(f"data source {cfg.path}: {err.args[0]}") from None
    return factory(cfg)


from vlp.data.sources import embedded, folder, hf, manifest, webdataset  # noqa: E402,F401  (registration)
