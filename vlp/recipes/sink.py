"""The last stage's survivors, per input shard, re-sharded into ``OUT/00000.tar, ...`` of ``sink.shard_size``
samples each, in input order, with ``sizes.json``. Which samples an output shard holds follows from the kept
counts alone, so after a kill each missing shard is rebuilt exactly and the finished ones are left alone."""
from __future__ import annotations

import itertools
import json
import math

from vlp.recipes.layout import OUTPUT_SHARD, Layout
from vlp.recipes.shards import ShardWriter, read_members
from vlp.utils import atomic_write_text


def kept_count(layout: Layout, stage: int, shard: int) -> int:
    with layout.decisions(stage, shard).open() as lines:
        return sum(json.loads(line)["kept"] for line in lines)


def write_output_shard(layout: Layout, stage: int, kept: list[int], index: int, shard_size: int) -> None:
    start, end = index * shard_size, min((index + 1) * shard_size, sum(kept))
    offset = 0
    with ShardWriter(layout.output_shard(index)) as writer:
        for shard, count in enumerate(kept):
            low, high = max(start, offset), min(end, offset + count)
            if low < high:
                members = read_members(layout.work_shard(stage, shard))
                for key, sample in itertools.islice(members, low - offset, high - offset):
                    writer.add(key, sample)
            offset += count


def write_sink(layout: Layout, stage: int, shards: int, shard_size: int) -> dict[str, int]:
    """Write the output shards still missing and ``sizes.json``; returns the samples per output shard."""
    kept = [kept_count(layout, stage, shard) for shard in range(shards)]
    total = sum(kept)
    sizes = {}
    for index in range(math.ceil(total / shard_size)):
        if not layout.output_shard(index).is_file():
            write_output_shard(layout, stage, kept, index, shard_size)
        sizes[OUTPUT_SHARD.format(index)] = min(shard_size, total - index * shard_size)
    atomic_write_text(layout.sizes, json.dumps(sizes, indent=1) + "\n")
    return sizes
