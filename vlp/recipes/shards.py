"""Reading tar shards into :class:`Sample` s (with vlp.data's scanner, so truncated and broken shards count as
training counts them) and writing them back reproducibly: fixed member metadata, so the same samples give the same
bytes, and written under a temporary name that is renamed only once complete."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterator

from vlp.config import SourceConfig
from vlp.data.sources.webdataset import IMAGE_EXTENSIONS, WebDatasetSource
from vlp.recipes.sample import Sample

IMAGE_ORDER = IMAGE_EXTENSIONS.split(";")


def read_members(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]] | str]:
    """(key, {extension: bytes}) for each sample of a shard in file order; a string is the reason the rest of the
    shard is lost (``bad_shard``, ``truncated_shard``), as vlp.data's scanner reports it."""
    if not os.path.isfile(path):
        yield "bad_shard"
        return
    source = WebDatasetSource(SourceConfig(path=str(path), type="webdataset"))
    with open(path, "rb") as file:
        for ref in source.scan(0):
            if isinstance(ref, str):
                yield ref
                continue
            members = {}
            for extension, offset, size in ref.members:
                file.seek(offset)
                members[extension] = file.read(size)
            yield ref.key, members


def as_sample(key: str, members: dict[str, bytes]) -> Sample:
    image_ext = next((ext for ext in IMAGE_ORDER if ext in members), None)
    sample = Sample(key, members, image_ext)
    if "json" in members:
        try:
            document = json.loads(members["json"])
        except (ValueError, UnicodeDecodeError):
            document = None
        if isinstance(document, dict):
            sample.json = document
        else:
            sample.problem = "malformed_json"
    return sample


def read_samples(path: str | Path) -> Iterator[Sample]:
    """The shard's samples; one the reader cannot take carries its ``problem``, and a lost shard remainder is a
    sample with no key, so that every one of them is counted once."""
    seen: set[str] = set()
    for item in read_members(path):
        if isinstance(item, str):
            yield Sample(None, problem=item)
            continue
        key, members = item
        sample = as_sample(key, members)
        if key in seen:  # the same key twice in a shard: readers would merge or confuse the two
            sample.problem = "duplicate_key"
        seen.add(key)
        yield sample


class ShardWriter:
    """A tar shard written member by member to a hidden temporary file beside ``path`` and renamed to ``path`` on
    ``commit``: readers see no shard or a whole one. Members get fixed metadata (mtime 0, root, mode 0644), so the
    bytes depend only on the samples."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.file = open(self.temp, "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.PAX_FORMAT)
        self.count = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        for extension, data in members.items():
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def commit(self) -> None:
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.temp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self.commit()
        else:
            self.abort()
