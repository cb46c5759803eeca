"""Every sample of a dataset judged as training judges it: the shared reading of ``vlp data inspect`` and
``vlp data convert``.

Captions are checked first, then the image is fully decoded, with the default ``data.captions.max_chars`` and
``data.max_pixels``, so the bad-sample counts these tools print are the ``bad/<reason>`` counts a run over the same
data would log.
"""
from __future__ import annotations

import itertools
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from PIL import Image
from tqdm import tqdm

from vlp.config import CaptionConfig, ConfigError, DataConfig
from vlp.data import BadSample, DataError, RawSample, decode_image, iter_in_order, open_sources
from vlp.data.pipeline import caption_candidates
from vlp.data.sources import Source
from vlp.data.sources.webdataset import declared_size

MAX_CHARS = CaptionConfig().max_chars
MAX_PIXELS = DataConfig().max_pixels


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
