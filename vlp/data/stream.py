"""The training stream: deterministic, resumable at sample granularity, skipping and counting bad samples.

Every (rank, dataloader worker) pair is a *slot*; slot ``s`` of ``S`` reads its own share of every source:

- an indexed source of N samples: draw ``c`` of the slot is global position ``p = s + c*S``, i.e. sample
  ``permutation(seed, epoch)[p % N]`` with ``epoch = p // N``: exact epochs, no shuffle buffer;
- a shard source: each epoch the shards are permuted and dealt round-robin to the slots (or, with fewer shards
  than slots, every slot reads every shard and keeps every S-th sample), then pass through a shuffle buffer.

Several sources are mixed by weight: draw ``n`` of a slot picks its source from a generator seeded by
``(seed, slot, n // 1024)``. Each worker builds whole batches from its slot, so a slot's state is a few
counters, sent along with every batch; the loop keeps the state of the last batch it consumed from each worker
and checkpoints it. On resume a worker re-derives its position from those counters (a shard source replays
its header scan, without reading images), so the run sees exactly the samples an uninterrupted one would have.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlp.data.decode import BadSample
from vlp.errors import DataError
from vlp.data.sources import RawSample, ShardRef, ShardSource, Source

MIX_CHUNK = 1024
MAX_CONSECUTIVE_BAD = 100_000  # a stream that finds nothing usable for this long stops instead of spinning


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class IndexedCursor:
    def __init__(self, source: Source, seed: int, source_id: int, slot: int, slots: int):
        self.source, self.seed, self.source_id, self.slot, self.slots = source, seed, source_id, slot, slots
        self.size = len(source)
        self._epoch, self._order = -1, None

    def draw(self, count: int) -> tuple[RawSample, int]:
        """The slot's ``count``-th sample and its seed, a function of the global position alone: so processes
        x workers split the same samples, augmented the same way, however the slots are laid out."""
        position = self.slot + count * self.slots
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, self.source_id, epoch]).permutation(self.size)
        return self.source.raw(int(self._order[offset])), _seed(self.seed, self.source_id, position)


class ShardCursor:
    """A slot's refs of a shard source, epoch after epoch, through a shuffle buffer of offsets."""

    def __init__(self, source: ShardSource, seed: int, source_id: int, slot: int, slots: int, buffer: int,
                 start: int):
        self.source, self.seed, self.source_id, self.slot, self.slots = source, seed, source_id, slot, slots
        self.buffer = max(buffer, 1)
        self.refs = self._refs()
        for _ in range(start):  # replay: header scans only, no image is read
            next(self.refs)

    def _epoch_refs(self, epoch: int) -> Iterator[ShardRef | str]:
        shards = len(self.source.shards)
        order = np.random.default_rng([self.seed, self.source_id, epoch]).permutation(shards)
        if shards >= self.slots:
            for shard in order[self.slot::self.slots]:
                yield from self.source.scan(int(shard))
            return
        kept = 0
        for shard in order:
            for item in self.source.scan(int(shard)):
                if isinstance(item, str) or kept % self.slots == self.slot:
                    yield item
                if not isinstance(item, str):
                    kept += 1

    def _refs(self) -> Iterator[ShardRef | str]:
        epoch = 0
        while True:
            rng = random.Random(f"{self.seed}:{self.source_id}:{self.slot}:{epoch}")
            pool: list[ShardRef] = []
            seen = 0
            for item in self._epoch_refs(epoch):
                if isinstance(item, str):  # a lost shard is counted where it is found
                    yield item
                    continue
                seen += 1
                if len(pool) < self.buffer:
                    pool.append(item)
                    continue
                index = rng.randrange(len(pool))
                pool[index], item = item, pool[index]
                yield item
            rng.shuffle(pool)
            yield from pool
            if not seen:
                raise DataError(f"no readable samples in the shards of {self.source.name} for worker slot "
                                f"{self.slot} of {self.slots}: fewer readable shards than workers x processes?")
            epoch += 1

    def draw(self, count: int) -> tuple[RawSample | str, int]:
        item = next(self.refs)
        seed = _seed(self.seed, self.source_id, self.slot, self.slots, count)
        return (item if isinstance(item, str) else self.source.read(item)), seed


@dataclass
class SlotState:
    draws: int = 0
    source_draws: list[int] = field(default_factory=list)
    good: int = 0
    bad: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"draws": self.draws, "source_draws": list(self.source_draws), "good": self.good,
                "bad": dict(self.bad)}


class SlotStream:
    """The samples of one slot, in order: ``next()`` gives ``(raw sample or bad-shard reason, sample seed)``."""

    def __init__(self, sources: list[Source], weights: list[float], seed: int, slot: int, slots: int,
                 shuffle_buffer: int, state: dict | None = None):
        state = state or {}
        self.state = SlotState(state.get("draws", 0), list(state.get("source_draws", [0] * len(sources))),
                               state.get("good", 0), dict(state.get("bad", {})))
        self.seed, self.slot = seed, slot
        self.probabilities = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.cursors = [
            IndexedCursor(source, seed, i, slot, slots) if source.indexed else
            ShardCursor(source, seed, i, slot, slots, shuffle_buffer, self.state.source_draws[i])
            for i, source in enumerate(sources)]
        self._chunk_index, self._chunk = -1, None

    def _source_of(self, draw: int) -> int:
        if len(self.cursors) == 1:
            return 0
        chunk, offset = divmod(draw, MIX_CHUNK)
        if chunk != self._chunk_index:
            rng = np.random.default_rng([self.seed, self.slot, chunk, 7])
            self._chunk_index, self._chunk = chunk, rng.choice(len(self.cursors), MIX_CHUNK, p=self.probabilities)
        return int(self._chunk[offset])

    def next(self) -> tuple[RawSample | str, int]:
        source = self._source_of(self.state.draws)
        item, seed = self.cursors[source].draw(self.state.source_draws[source])
        self.state.draws += 1
        self.state.source_draws[source] += 1
        return item, seed


class TrainStream(IterableDataset):
    """Yields whole batches from each worker, each carrying its slot's state under ``"stream"``.

    ``prepare(raw, seed)`` turns a raw sample into a dict of fields (raising BadSample), ``collate`` stacks
    them. ``states`` maps a logical worker to the state it resumes from; ``rotation`` is the number of batches
    already consumed, so that the first batch after a resume comes from the worker whose turn it is.
    """

    def __init__(self, sources: list[Source], weights: list[float], prepare: Callable, collate: Callable,
                 batch_size: int, seed: int, rank: int, world_size: int, num_workers: int, shuffle_buffer: int,
                 states: dict[int, dict] | None = None, rotation: int = 0):
        self.sources, self.weights, self.prepare, self.collate = sources, weights, prepare, collate
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.workers, self.shuffle_buffer = max(num_workers, 1), shuffle_buffer
        self.states, self.rotation = states or {}, rotation

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = ((info.id if info else 0) + self.rotation) % self.workers
        slot, slots = self.rank * self.workers + worker, self.world_size * self.workers
        stream = SlotStream(self.sources, self.weights, self.seed, slot, slots, self.shuffle_buffer,
                            self.states.get(worker))
        state, consecutive_bad = stream.state, 0
        while True:
            items = []
            while len(items) < self.batch_size:
                raw, sample_seed = stream.next()
                try:
                    if isinstance(raw, str):
                        raise BadSample(raw)
                    if raw.bad:
                        raise BadSample(raw.bad)
                    items.append(self.prepare(raw, sample_seed))
                    state.good += 1
                    consecutive_bad = 0
                except BadSample as bad:
                    state.bad[bad.reason] = state.bad.get(bad.reason, 0) + 1
                    consecutive_bad += 1
                    if consecutive_bad >= MAX_CONSECUTIVE_BAD:
                        names = ", ".join(s.name for s in self.sources)
                        raise DataError(f"{consecutive_bad} bad samples in a row in {names}: "
                                        f"{_format_counts(state.bad)}") from None
            batch = self.collate(items)
            batch["stream"] = {"worker": worker, **state.as_dict()}
            yield batch


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


class StreamPosition:
    """What the loop knows of the stream: batches consumed, and each worker's state as of its last batch."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.batches = state.get("batches", 0)
        self.workers = {int(k): v for k, v in state.get("workers", {}).items()}

    def consumed(self, batch: dict) -> None:
        stream = batch.pop("stream")
        self.workers[stream["worker"]] = stream
        self.batches += 1

    def bad_counts(self) -> Counter:
        total: Counter = Counter()
        for state in self.workers.values():
            total.update(state["bad"])
        return total

    def state_dict(self, num_workers: int, world_size: int) -> dict:
        return {"batches": self.batches, "num_workers": num_workers, "world_size": world_size,
                "workers": {str(k): v for k, v in sorted(self.workers.items())}}


def stream_loader(stream: TrainStream, num_workers: int, pin_memory: bool = False) -> DataLoader:
    # its own generator: starting the iterator must not draw from the global RNG that a resume restores
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers else None, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(stream.seed))
