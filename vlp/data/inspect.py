"""``vlp data inspect``: counts by bad-sample reason, caption and image size distributions, and a grid of random
usable samples with their captions."""
from __future__ import annotations

import io
import math
import random
import textwrap
from array import array
from collections import Counter

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from vlp.data import BadSample
from vlp.data.judged import Usable, format_counts, no_usable_sample, open_with_fields, read_judged
from vlp.utils import atomic_write_bytes

GRID_CELL = 160  # pixels per grid image side
GRID_CAPTION_LINES = 4


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


def inspect(spec: str, caption_fields: list[str] | None, limit: int | None, grid_path: str, grid_size: int,
            seed: int) -> dict:
    """Read ``spec`` (at most ``limit`` samples), write the grid PNG, and return the report."""
    stats, grid = InspectStats(), GridSample(grid_size, seed)
    for judged in read_judged(open_with_fields(spec, caption_fields), limit, "inspect"):
        stats.add(judged)
        if isinstance(judged, Usable):
            grid.offer(judged)
    if not stats.usable:
        raise no_usable_sample(spec, stats.read, stats.bad)
    atomic_write_bytes(grid_path, grid.render())
    return {**stats.report(spec), "grid": str(grid_path), "grid_samples": len(grid.picked)}
