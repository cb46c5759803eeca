"""Engines run a stage's shards; everything else (planning, global decisions, the sink, the report) is the same for
all of them. An engine is a class registered in ``ENGINES``, built with the stages and the recipe's settings
(``RecipeConfig``) before the output directory is touched, with ``run_stage(run, shards, progress)`` (process each
shard with ``vlp.recipes.shard_job.process_shard``, which commits it) and ``close()``. ``local`` runs on this
machine: shards one after the other, sample steps in a pool of forked worker processes fed a bounded window of
chunks, batch steps and writing in the main process. ``ray`` (``engine_ray.py``) runs shards on a Ray cluster."""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections import deque
from typing import Callable, Iterable, Iterator

from vlp.recipes.recipe import RecipeConfig
from vlp.recipes.sample import Sample
from vlp.recipes.shard_job import StageRun, apply_sample_steps, process_shard
from vlp.recipes.stages import Stage
from vlp.utils import Registry

ENGINES: Registry = Registry("recipe engine")
PR_SET_PDEATHSIG = 1

_stages: list[Stage] = []  # set before the workers fork, so that they inherit the steps rather than unpickle them


def default_workers() -> int:
    return min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4)


def run_segment(task: tuple[int, int, list[Sample]]) -> list[Sample]:
    stage, segment, samples = task
    return apply_sample_steps(_stages[stage].segments[segment], samples)


def _start_worker() -> None:
    # Ctrl-C is the main process's to handle; and a worker whose main process was killed (SIGKILL) would otherwise
    # wait for work forever
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker exits when it next finds its pipe closed
        pass


@ENGINES.register("local")
class LocalEngine:
    def __init__(self, stages: list[Stage], config: RecipeConfig):
        global _stages
        _stages = stages
        self.workers = default_workers() if config.workers is None else config.workers
        self.pool = None
        if self.workers > 0:
            self.pool = multiprocessing.get_context("fork").Pool(self.workers, initializer=_start_worker)
        self.window = 2 * max(self.workers, 1)  # chunks in flight: enough to keep every worker busy

    def map_samples(self, stage: int, segment: int, chunks: Iterable[list[Sample]]) -> Iterator[list[Sample]]:
        """Apply a run of sample steps to each chunk, in order, at most ``window`` chunks ahead of the consumer."""
        if self.pool is None:
            yield from (run_segment((stage, segment, chunk)) for chunk in chunks)
            return
        pending: deque = deque()
        for chunk in chunks:
            pending.append(self.pool.apply_async(run_segment, ((stage, segment, chunk),)))
            if len(pending) >= self.window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def run_stage(self, run: StageRun, shards: list[int], progress: Callable[[int], None]) -> None:
        for shard in shards:
            process_shard(run, shard, self.map_samples, progress)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


from vlp.recipes import engine_ray  # noqa: E402,F401  (registration; Ray itself is imported only when it is used)
