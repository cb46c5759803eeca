"""``vlp data convert``: any dataset the data layer reads -> WebDataset tar shards in the img2dataset layout, with
a ``sizes.json``; bad samples are skipped and counted, and no shard is ever seen half-written."""
from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path

from PIL import Image
from webdataset import TarWriter

from vlp.data import BadSample
from vlp.data.judged import Usable, no_usable_sample, open_with_fields, read_judged
from vlp.utils import atomic_write_text, fsync_dir

SHARD_NAME = "shard-{:06d}.tar"
# encoded formats whose bytes are stored as they are (the img2dataset extensions); any other is re-encoded as PNG
STORED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}


def encoded_image(sample: Usable) -> tuple[str, bytes]:
    """(extension, bytes) to store: a file's own bytes when its format is a usual web format, else PNG."""
    raw = sample.raw.image
    if isinstance(raw, (bytes, bytearray)):
        extension = STORED_FORMATS.get(Image.open(io.BytesIO(raw)).format)
        if extension:
            return extension, bytes(raw)
    image = raw if isinstance(raw, Image.Image) and raw.mode in PNG_MODES else sample.image
    out = io.BytesIO()
    image.save(out, "PNG")
    return "png", out.getvalue()


def tar_members(sample: Usable, key: str) -> dict[str, str | bytes]:
    """The sample in the img2dataset layout: KEY.<image>, KEY.txt (the first usable caption), KEY.json (every
    usable caption by field, the source's key and the label), KEY.cls (the label, when there is one).

    A field keeps its name in KEY.json, less a ``json.`` prefix, so that ``caption_fields: [json.NAME]`` reads
    it back from the new shards as it read it from the source."""
    extension, image = encoded_image(sample)
    by_field: dict[str, list[str]] = {}
    for name, text in sample.captions:
        by_field.setdefault(name, []).append(text)
    document = {name.removeprefix("json."): texts if isinstance(sample.raw.captions[name], (list, tuple))
                else texts[0] for name, texts in by_field.items()}
    document["key"] = sample.raw.key
    members = {"__key__": key, extension: image, "txt": sample.captions[0][1].encode()}
    if sample.raw.label is not None:
        document["label"] = int(sample.raw.label)
        members["cls"] = str(int(sample.raw.label)).encode()
    members["json"] = json.dumps(document, ensure_ascii=False).encode()
    return members


class ShardWriter:
    """Writes ``shard-NNNNNN.tar`` files one after the other. Each is written to a hidden temporary file in the
    same directory and renamed only once complete, so a final name never shows a half-written shard.

    A shard is complete once it holds ``max_count`` samples or, as in webdataset's ``ShardWriter``, once its
    members reach ``max_bytes`` (headers included): a shard exceeds ``max_bytes`` by less than one sample."""

    def __init__(self, folder: Path, max_count: int, max_bytes: int | None):
        self.folder, self.max_count, self.max_bytes = folder, max_count, max_bytes
        self.sizes: dict[str, int] = {}
        self.file = self.tar = self.temp = None
        self.count = 0

    def write(self, members: dict[str, str | bytes]) -> None:
        if self.tar is None:
            self._open()
        self.tar.write(members)
        self.count += 1
        if self.count >= self.max_count or self.max_bytes is not None and self.tar.tarstream.offset >= self.max_bytes:
            self.finish()

    def _open(self) -> None:
        self.temp = self.folder / f".{SHARD_NAME.format(len(self.sizes))}.{os.getpid()}.tmp"
        self.file = open(self.temp, "xb")
        self.tar, self.count = TarWriter(self.file, encoder=False), 0

    def finish(self) -> None:
        """Complete the open shard (if any) and give it its final name."""
        if self.tar is None:
            return
        name = SHARD_NAME.format(len(self.sizes))
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temp, self.folder / name)
        self.sizes[name] = self.count
        self.file = self.tar = self.temp = None

    def abort(self) -> None:
        """Drop the open shard's temporary file; the shards already complete stay."""
        if self.file is not None:
            self.file.close()
            self.temp.unlink(missing_ok=True)
            self.file = self.tar = self.temp = None


def prepare_destination(dst: Path, overwrite: bool) -> None:
    """Refuse to mix new shards with earlier ones; with ``overwrite``, remove the earlier shards (and any temporary
    file a killed conversion left) first, so a stale shard can never pair with the new sizes.json."""
    dst.mkdir(parents=True, exist_ok=True)
    earlier = sorted(dst.glob("shard-*.tar"))
    if earlier and not overwrite:
        raise FileExistsError(f"{dst} already holds shards ({earlier[0].name}, ...); pass --overwrite to "
                              "replace them")
    for path in [*earlier, *dst.glob(".shard-*.tmp"), dst / "sizes.json"]:
        path.unlink(missing_ok=True)


def convert(src: str, dst: Path, caption_fields: list[str] | None, shard_size: int, max_shard_bytes: int | None,
            limit: int | None, overwrite: bool) -> tuple[dict[str, int], Counter]:
    """Write the usable samples of ``src`` as shards in ``dst``; returns (samples per shard, bad counts)."""
    sources = open_with_fields(src, caption_fields)
    prepare_destination(dst, overwrite)
    writer, read, bad = ShardWriter(dst, shard_size, max_shard_bytes), 0, Counter()
    try:
        for judged in read_judged(sources, limit, "convert"):
            read += 1
            if isinstance(judged, BadSample):
                bad[judged.reason] += 1
            else:
                writer.write(tar_members(judged, f"{read - 1:09d}"))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    if not writer.sizes:
        raise no_usable_sample(src, read, bad)
    atomic_write_text(dst / "sizes.json", json.dumps(writer.sizes, indent=1) + "\n")
    fsync_dir(dst)
    return writer.sizes, bad
