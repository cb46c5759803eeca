"""WebDataset tar shards in the img2dataset layout: ``key.jpg|png|webp`` + ``key.txt`` + optional ``key.json``,
and optional ``key.cls`` (a class index, as clip_benchmark's classification shards carry).

Shard lists are brace-expanded (``/data/{00000..00999}.tar``), globbed, and joined with ``::``. A shard is
scanned header by header (``tarfile`` seeks over the data), giving each sample's member offsets; bytes are read
with ``os.pread`` only when the sample leaves the shuffle buffer, so the buffer holds offsets, not images, and
a resumed run can replay the scan without reading a single image.

Per-shard sample counts come from ``sizes.json`` (WebDataset's convention, written by ``vlp data convert``) or
img2dataset's ``*_stats.json``, and otherwise from scanning the headers: never from a guess.
"""
from __future__ import annotations

import glob
import json
import os
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext

from vlp.config import ConfigError
from vlp.data.sources import SOURCES, RawSample, ShardRef, ShardSource

IMAGE_EXTENSIONS = "jpg;jpeg;png;webp;bmp;tif;tiff"


def expand_shards(spec: str) -> list[str]:
    """``a/{000..009}.tar::b/*.tar`` -> the existing files, in the order given; names the spec when none exist."""
    paths: list[str] = []
    for part in spec.split("::"):
        for expanded in braceexpand(part):
            matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
            paths += matches
    existing = [p for p in paths if os.path.isfile(p)]
    if not existing:
        raise ConfigError(f"no tar shards match {spec}")
    return paths  # missing ones stay in, and are counted as bad shards when reached


@lru_cache(maxsize=None)
def _declared_sizes(folder: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    sizes_file = Path(folder, "sizes.json")
    if sizes_file.is_file():
        try:
            sizes.update({Path(k).name: int(v) for k, v in json.loads(sizes_file.read_text()).items()})
        except (ValueError, AttributeError, TypeError):
            pass
    return sizes


def declared_size(shard: str) -> int | None:
    """The shard's sample count from sizes.json or img2dataset's stats file, if there is one."""
    path = Path(shard)
    found = _declared_sizes(str(path.parent)).get(path.name)
    if found is not None:
        return found
    stats = path.with_name(path.name[: -len(".tar")] + "_stats.json") if path.name.endswith(".tar") else None
    if stats is not None and stats.is_file():
        try:
            return int(json.loads(stats.read_text())["successes"])
        except (ValueError, KeyError, TypeError):
            return None
    return None


def _json_field(document, path: list[str]):
    for part in path:
        if isinstance(document, dict):
            document = document.get(part)
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            return None
    return document


def _class_index(data: bytes | None) -> int | None:
    """A ``KEY.cls`` member (WebDataset's class label: the index as ASCII digits), or None."""
    try:
        return int(data) if data is not None else None
    except ValueError:
        return None


@SOURCES.register("webdataset")
class WebDatasetSource(ShardSource):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.shards = expand_shards(cfg.path)
        self.image_extensions = (cfg.image_field or IMAGE_EXTENSIONS).split(";")
        self.caption_fields = cfg.caption_fields or ["txt"]
        self._files: dict[str, int] = {}
        self._pid = os.getpid()

    def scan(self, shard: int) -> Iterator[ShardRef | str]:
        path = self.shards[shard]
        try:
            size = os.path.getsize(path)
            archive = tarfile.open(path, mode="r:")
        except (OSError, tarfile.TarError):
            yield "bad_shard"
            return
        key, members = None, []
        with archive:
            while True:
                try:
                    info = archive.next()
                except (tarfile.TarError, OSError):  # the sample being read is incomplete: lost with the rest
                    yield "truncated_shard"
                    key, members = None, []
                    break
                if info is None:
                    break
                if not info.isfile() or "/__" in f"/{info.name}":
                    continue
                split = base_plus_ext(info.name)
                if split is None:
                    continue
                prefix, extension = split
                if prefix != key and members:
                    yield ShardRef(shard, key, tuple(members))
                    members = []
                if info.offset_data + info.size > size:  # tarfile reads a cut-off member as the end of the file
                    yield "truncated_shard"
                    key, members = None, []
                    break
                key = prefix
                members.append((extension.lower(), info.offset_data, info.size))
        if members:
            yield ShardRef(shard, key, tuple(members))

    def shard_sizes(self) -> list[int]:
        sizes = []
        for shard, path in enumerate(self.shards):
            declared = declared_size(path) if os.path.isfile(path) else 0
            sizes.append(declared if declared is not None else sum(
                isinstance(ref, ShardRef) for ref in self.scan(shard)))
        return sizes

    def _fd(self, path: str) -> int:
        if self._pid != os.getpid():  # a forked worker: the parent's descriptors are not ours to keep
            self._files, self._pid = {}, os.getpid()
        fd = self._files.get(path)
        if fd is None:
            if len(self._files) >= 32:
                os.close(self._files.pop(next(iter(self._files))))
            fd = self._files[path] = os.open(path, os.O_RDONLY)
        return fd

    def read(self, ref: ShardRef) -> RawSample:
        path = self.shards[ref.shard]
        try:
            fd = self._fd(path)
            parts = {ext: os.pread(fd, size, offset) for ext, offset, size in ref.members}
        except OSError:
            return RawSample(ref.key, None, bad="unreadable_shard")
        image = next((parts[ext] for ext in self.image_extensions if ext in parts), None)
        captions, document = {}, None
        for name in self.caption_fields:
            if name.startswith("json."):
                if document is None:
                    try:
                        document = json.loads(parts.get("json", b"{}"))
                    except (ValueError, UnicodeDecodeError):
                        document = {}
                captions[name] = _json_field(document, name[len("json."):].split("."))
            else:
                captions[name] = parts.get(name)
        return RawSample(ref.key, image, captions, _class_index(parts.get("cls")))
