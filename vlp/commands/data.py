"""``vlp data inspect`` and ``vlp data convert``: look at a dataset the way training reads it, and rewrite it as
WebDataset tar shards.

Both take the same spec as ``data.train`` and judge every sample with the training pipeline's own checks (captions
first, then a full image decode, with the default ``data.captions.max_chars`` and ``data.max_pixels``), so the
bad-sample counts printed here are the ``bad/<reason>`` counts a run over the same data would log.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import random
import re
import sys
import textwrap
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps
from tqdm import tqdm
from webdataset import TarWriter

from vlp.config import CaptionConfig, ConfigError, DataConfig
from vlp.data import BadSample, DataError, RawSample, decode_image, iter_in_order, open_sources
from vlp.data.pipeline import caption_candidates
from vlp.data.sources import Source
from vlp.data.sources.webdataset import declared_size
from vlp.utils import atomic_write_bytes, atomic_write_text, fsync_dir

MAX_CHARS = CaptionConfig().max_chars
MAX_PIXELS = DataConfig().max_pixels
GRID_CELL = 160  # pixels per grid image side
GRID_CAPTION_LINES = 4
SHARD_NAME = "shard-{:06d}.tar"
# encoded formats whose bytes are stored as they are (the img2dataset extensions); any other is re-encoded as PNG
STORED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}


def add_data_commands(commands) -> None:
    """Register ``vlp data inspect`` and ``vlp data convert`` on the ``vlp`` subparsers object."""
    data = commands.add_parser("data", help="dataset tools: inspect, convert")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    spec_help = "a dataset spec as in data.train: 'default', '/d/{00000..00009}.tar', a manifest, a folder"

    inspect = data_commands.add_parser("inspect", help="counts, bad samples, caption and image sizes, a grid")
    inspect.add_argument("path", help=spec_help)
    inspect.add_argument("--limit", type=int, help="read at most this many samples (default: all)")
    inspect.add_argument("--grid", default="inspect_grid.png", help="PNG of random usable samples to write")
    inspect.add_argument("--grid-size", type=int, default=16, help="samples in the grid (default 16)")
    inspect.add_argument("--seed", type=int, default=0, help="picks the grid's samples")
    inspect.add_argument("--caption-field", dest="caption_fields", action="append", metavar="FIELD",
                         help="a caption field to read, as in data.train's caption_fields: a manifest or HF column, "
                              "a tar extension, or json.PATH; repeatable (default: the format's usual field)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(func=inspect_command)

    convert = data_commands.add_parser("convert", help="rewrite a dataset as WebDataset tar shards")
    convert.add_argument("src", help=spec_help)
    convert.add_argument("dst", help="directory for shard-000000.tar, ... and sizes.json")
    convert.add_argument("--format", required=True, choices=["webdataset"])
    convert.add_argument("--shard-size", type=int, default=10000, help="samples per shard (default 10000)")
    convert.add_argument("--max-shard-bytes", type=parse_bytes,
                         help="also start a new shard once one holds this many bytes, e.g. 1GB (a shard goes past "
                              "it by less than one sample)")
    convert.add_argument("--caption-field", dest="caption_fields", action="append", metavar="FIELD",
                         help="a caption field to keep, as for inspect; repeat it to keep several (alt-text and "
                              "recaptions). The first usable one goes into KEY.txt, all of them into KEY.json")
    convert.add_argument("--limit", type=int, help="read at most this many samples (default: all)")
    convert.add_argument("--overwrite", action="store_true", help="replace the shards already in DST")
    convert.set_defaults(func=convert_command)


def parse_bytes(text: str) -> int:
    """``1000``, ``64MB``, ``1.5G`` -> bytes (decimal units), for ``--max-shard-bytes``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 500000000 or 500MB, got '{text}'")
    return int(float(match[1]) * 1000 ** " kmgt".index(match[2] or " "))


def _check_at_least_one(**options: int | None) -> None:
    for name, value in options.items():
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


# --- reading and judging samples ---------------------------------------------------------------------------------

@dataclass
class Usable:
    """A sample training would use: the source's raw fields, its usable (field, caption) pairs, its RGB image."""

    raw: RawSample
    captions: list[tuple[str, str]]
    image: Image.Image


def judge(item: RawSample | str) -> Usable:
    """The sample as training would take it, or the BadSample training would skip it with."""
    if isinstance(item, str):  # the rest of a shard is lost; it counts once, as training counts it
        raise BadSample(item)
    if item.bad:
        raise BadSample(item.bad)
    captions = caption_candidates(item.captions, MAX_CHARS)
    return Usable(item, captions, decode_image(item.image, MAX_PIXELS))


def known_size(sources: list[Source]) -> int | None:
    """The sample count when it is known without reading the data (for the progress bar), else None."""
    total = 0
    for source in sources:
        if source.indexed:
            total += len(source)
            continue
        sizes = [declared_size(shard) for shard in source.shards]
        if None in sizes:
            return None
        total += sum(sizes)
    return total


def read_judged(sources: list[Source], limit: int | None, desc: str) -> Iterator[Usable | BadSample]:
    """Every source's samples in file order, judged, up to ``limit`` of them, behind a progress bar on stderr."""
    items = itertools.islice(itertools.chain.from_iterable(iter_in_order(s) for s in sources), limit)
    total = known_size(sources)
    if limit is not None:
        total = limit if total is None else min(total, limit)
    with tqdm(items, total=total, desc=desc, unit="sample", leave=False, file=sys.stderr) as progress:
        for item in progress:
            try:
                yield judge(item)
            except BadSample as bad:
                yield bad


def open_with_fields(spec: str, caption_fields: list[str] | None) -> list[Source]:
    """The sources of ``spec``, reading ``caption_fields`` when given. Sources with fixed caption fields (image
    folders, the embedded set) ignore caption_fields, so a field they lack is named here rather than every sample
    being skipped as missing_caption."""
    sources, _ = open_sources([{"path": spec, "caption_fields": caption_fields}] if caption_fields else spec)
    for source in sources if caption_fields else []:
        first = next((item for item in iter_in_order(source) if not isinstance(item, str)), None)
        missing = [field for field in caption_fields if first is not None and field not in first.captions]
        if missing:
            raise ConfigError(f"{spec} has no caption field '{missing[0]}'; its fields: {', '.join(first.captions)}")
    return sources


def format_counts(counts: Counter) -> str:
    return ", ".join(f"{reason}={count}" for reason, count in sorted(counts.items())) or "none"


def no_usable_sample(spec: str, read: int, bad: Counter) -> DataError:
    detail = format_counts(bad) if read else "it holds no samples"
    return DataError(f"no usable sample in {spec} (read {read}: {detail})")


# --- inspect -----------------------------------------------------------------------------------------------------

class GridSample:
    """A uniform random sample of ``size`` usable samples from a stream of unknown length (reservoir sampling),
    kept as grid-sized thumbnails so that memory does not grow with the images."""

    def __init__(self, size: int, seed: int):
        self.size, self.rng, self.seen = size, random.Random(seed), 0
        self.picked: list[tuple[int, Image.Image, str]] = []  # (stream position, thumbnail, caption)

    def offer(self, sample: Usable) -> None:
        slot = self.seen if self.seen < self.size else self.rng.randrange(self.seen + 1)
        if slot < self.size:
            entry = (self.seen, ImageOps.contain(sample.image, (GRID_CELL, GRID_CELL)), sample.captions[0][1])
            if slot < len(self.picked):
                self.picked[slot] = entry
            else:
                self.picked.append(entry)
        self.seen += 1

    def render(self) -> bytes:
        """The picked samples in stream order, each with its caption wrapped under it, as PNG bytes."""
        font = ImageFont.load_default(size=12)
        chars_per_line = max(int(GRID_CELL / (font.getlength("x" * 10) / 10)), 8)
        line_height = font.getbbox("Ag")[3] + 2
        cell_height = GRID_CELL + 4 + GRID_CAPTION_LINES * line_height
        columns = math.ceil(math.sqrt(len(self.picked)))
        rows = math.ceil(len(self.picked) / columns)
        pad = 8
        grid = Image.new("RGB", (columns * (GRID_CELL + pad) + pad, rows * (cell_height + pad) + pad), "white")
        draw = ImageDraw.Draw(grid)
        for i, (_, thumbnail, caption) in enumerate(sorted(self.picked, key=lambda entry: entry[0])):
            left = pad + (i % columns) * (GRID_CELL + pad)
            top = pad + (i // columns) * (cell_height + pad)
            offset = ((GRID_CELL - thumbnail.width) // 2, (GRID_CELL - thumbnail.height) // 2)
            grid.paste(thumbnail, (left + offset[0], top + offset[1]))
            lines = textwrap.wrap(caption, chars_per_line, max_lines=GRID_CAPTION_LINES, placeholder=" ...")
            for n, line in enumerate(lines):
                draw.text((left, top + GRID_CELL + 4 + n * line_height), line, fill="black", font=font)
        out = io.BytesIO()
        grid.save(out, "PNG")
        return out.getvalue()


class InspectStats:
    """Counts and size distributions over the samples read; sizes are kept in compact arrays for percentiles."""

    def __init__(self):
        self.read, self.bad, self.fields = 0, Counter(), Counter()
        self.caption_chars, self.caption_words = array("q"), array("q")
        self.widths, self.heights = array("q"), array("q")

    def add(self, judged: Usable | BadSample) -> None:
        self.read += 1
        if isinstance(judged, BadSample):
            self.bad[judged.reason] += 1
            return
        for _, text in judged.captions:
            self.caption_chars.append(len(text))
            self.caption_words.append(len(text.split()))
        self.fields.update({name for name, _ in judged.captions})
        self.widths.append(judged.image.width)
        self.heights.append(judged.image.height)

    @property
    def usable(self) -> int:
        return len(self.widths)

    def report(self, spec: str) -> dict:
        widths, heights = np.asarray(self.widths, float), np.asarray(self.heights, float)
        return {"path": spec, "read": self.read, "usable": self.usable, "bad": dict(sorted(self.bad.items())),
                "captions": len(self.caption_chars),
                "caption_chars": distribution(self.caption_chars), "caption_words": distribution(self.caption_words),
                "image_width": distribution(widths), "image_height": distribution(heights),
                "image_megapixels": distribution(widths * heights / 1e6),
                "caption_fields": dict(sorted(self.fields.items()))}


def distribution(values) -> dict[str, float]:
    low, median, p95, high = np.percentile(np.asarray(values, float), [0, 50, 95, 100])
    return {"min": float(low), "median": float(median), "p95": float(p95), "max": float(high)}


def format_report(report: dict) -> str:
    rows = [("caption characters", "caption_chars"), ("caption words", "caption_words"),
            ("image width", "image_width"), ("image height", "image_height"), ("megapixels", "image_megapixels")]
    table = [("", "min", "median", "p95", "max")]
    table += [(label, *(f"{report[key][stat]:.4g}" for stat in ("min", "median", "p95", "max")))
              for label, key in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    fields = ", ".join(f"{name} ({count} samples)" for name, count in report["caption_fields"].items())
    return "\n".join([
        f"{report['path']}: read {report['read']} samples, {report['usable']} usable, "
        f"{report['read'] - report['usable']} bad",
        f"bad samples: {format_counts(Counter(report['bad']))}",
        *("  ".join([row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:]))]).rstrip()
          for row in table),
        f"caption fields: {fields}",
        f"grid: {report['grid']} ({report['grid_samples']} samples)",
    ])


def inspect_command(args: argparse.Namespace) -> None:
    _check_at_least_one(limit=args.limit, grid_size=args.grid_size)
    sources = open_with_fields(args.path, args.caption_fields)
    stats, grid = InspectStats(), GridSample(args.grid_size, args.seed)
    for judged in read_judged(sources, args.limit, "inspect"):
        stats.add(judged)
        if isinstance(judged, Usable):
            grid.offer(judged)
    if not stats.usable:
        raise no_usable_sample(args.path, stats.read, stats.bad)
    atomic_write_bytes(args.grid, grid.render())
    report = {**stats.report(args.path), "grid": str(args.grid), "grid_samples": len(grid.picked)}
    print(json.dumps(report, indent=2) if args.json else format_report(report))


# --- convert -----------------------------------------------------------------------------------------------------

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


def convert_command(args: argparse.Namespace) -> None:
    _check_at_least_one(limit=args.limit, shard_size=args.shard_size, max_shard_bytes=args.max_shard_bytes)
    sources = open_with_fields(args.src, args.caption_fields)
    dst = Path(args.dst)
    prepare_destination(dst, args.overwrite)
    writer, read, bad = ShardWriter(dst, args.shard_size, args.max_shard_bytes), 0, Counter()
    try:
        for judged in read_judged(sources, args.limit, "convert"):
            read += 1
            if isinstance(judged, BadSample):
                bad[judged.reason] += 1
            else:
                writer.write(tar_members(judged, f"{read - 1:09d}"))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    written = sum(writer.sizes.values())
    if not written:
        raise no_usable_sample(args.src, read, bad)
    atomic_write_text(dst / "sizes.json", json.dumps(writer.sizes, indent=1) + "\n")
    fsync_dir(dst)
    print(f"wrote {written} samples in {len(writer.sizes)} shards to {dst} (skipped: {format_counts(bad)})")
