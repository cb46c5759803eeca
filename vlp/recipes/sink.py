"""The last stage's survivors, per input shard, re-sharded into ``OUT/00000.tar, ...`` of ``sink.shard_size``
samples each, in input order, with ``sizes.json``. Which samples an output shard holds follows from the kept
counts alone, so after a kill each missing shard is rebuilt exactly and the finished ones are left alone. A last
stage that only applies a global step's verdicts writes no shards of its own: the sink applies them as it reads the
stage before's."""
from __future__ import annotations

import itertools
import json
import math
import pickle
from typing import Iterator

from vlp.recipes.layout import OUTPUT_SHARD, Layout
from vlp.recipes.shards import ShardWriter, read_members, read_samples
from vlp.recipes.stages import Stage
from vlp.utils import atomic_write_text


def kept_count(layout: Layout, stage: int, shard: int) -> int:
    return len(kept_keys(layout, stage, shard))


def kept_keys(layout: Layout, stage: int, shard: int) -> list[str]:
    with layout.decisions(stage, shard).open() as lines:
        return [record["key"] for record in map(json.loads, lines) if record["kept"]]


def survivors(layout: Layout, stage: Stage, shard: int, verdicts: dict | None) -> Iterator[tuple[str, dict]]:
    """(key, members) of the samples of an input shard that the stage kept, in order: its work shard as stored,
    or for a stage that only applies verdicts, the stage before's with the verdicts applied."""
    if not stage.only_applies:
        yield from read_members(layout.work_shard(stage.index, shard))
        return
    for sample in read_samples(layout.work_shard(stage.stored_in, shard)):
        sample.judge(stage.applies.name, verdicts[(shard, sample.key)])
        if not sample.dropped:
            yield sample.key, sample.output_members()


def write_output_shard(layout: Layout, stage: Stage, verdicts: dict | None, kept: list[int], index: int,
                       shard_size: int) -> None:
    start, end = index * shard_size, min((index + 1) * shard_size, sum(kept))
    offset = 0
    with ShardWriter(layout.output_shard(index)) as writer:
        for shard, count in enumerate(kept):
            low, high = max(start, offset), min(end, offset + count)
            if low < high:
                for key, sample in itertools.islice(survivors(layout, stage, shard, verdicts), low - offset,
                                                    high - offset):
                    writer.add(key, sample)
            offset += count


def write_sink(layout: Layout, stage: Stage, shards: int, shard_size: int) -> dict[str, int]:
    """Write the output shards still missing and ``sizes.json``; returns the samples per output shard."""
    kept = [kept_count(layout, stage.index, shard) for shard in range(shards)]
    total = sum(kept)
    verdicts = None
    if stage.only_applies:
        verdicts = pickle.loads(layout.global_result(stage.index - 1).read_bytes())["verdicts"]
    sizes = {}
    for index in range(math.ceil(total / shard_size)):
        if not layout.output_shard(index).is_file():
            write_output_shard(layout, stage, verdicts, kept, index, shard_size)
        sizes[OUTPUT_SHARD.format(index)] = min(shard_size, total - index * shard_size)
    atomic_write_text(layout.sizes, json.dumps(sizes, indent=1) + "\n")
    return sizes
