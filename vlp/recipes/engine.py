"""Engines run a stage's shards; everything else (planning, global decisions, the sink, the report) is the same for
all of them. An engine is a class registered in ``ENGINES``, built with the stages and the recipe's settings
(``RecipeConfig``) before the output directory is touched, with ``run_stage(run, shards, progress)`` (process each
shard with ``vlp.recipes.shard_job.process_shard``, which commits it) and ``close()``. ``local`` runs on this
machine: shards one after the other; each segment's sample steps and ``prepare`` (decoding and preprocessing images
for a model) in a pool of forked worker processes, started for each stage once its steps have loaded their models,
at a lower priority than the main process, fed a bounded window of chunks split into tasks; batch steps,
signatures and writing in the main process. ``ray`` (``engine_ray.py``) runs shards on a Ray cluster."""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections import deque
from typing import Callable, Iterable, Iterator

from vlp.recipes.recipe import RecipeConfig
from vlp.recipes.sample import Sample
from vlp.recipes.shard_job import StageRun, apply_segment, process_shard
from vlp.recipes.stages import CHUNK_SAMPLES, Stage
from vlp.recipes.steps import core_threads
from vlp.recipes.steps.similarity import cores
from vlp.utils import Registry

ENGINES: Registry = Registry("recipe engine")
PR_SET_PDEATHSIG = 1
WORKER_NICENESS = 10

_stages: list[Stage] = []  # set before the workers fork, so that they inherit the steps rather than unpickle them


def default_workers() -> int:
    return min(cores(), 4)


def run_segment(task: tuple[int, int, list[Sample]]) -> list[dict]:
    stage, segment, samples = task
    return [sample.outcome() for sample in apply_segment(_stages[stage], _stages[stage].segments[segment], samples)]


def _start_worker() -> None:
    # Ctrl-C is the main process's to handle; and a worker whose main process was killed (SIGKILL) would otherwise
    # wait for work forever
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker exits when it next finds its pipe closed
        pass
    if "torch" in sys.modules:  # forked from a process whose torch threads are running: use none of our own
        sys.modules["torch"].set_num_threads(1)
    # the main process is the pipeline's one serial part, running the model the workers feed: it comes first on a
    # busy CPU, and the workers take the rest (with equal shares, its torch threads and the workers would preempt
    # one another, and torch's threads waiting for one another at every op make each op many times slower)
    os.nice(WORKER_NICENESS)


def tasks_of(chunk: list[Sample]) -> list[list[Sample]]:
    """A chunk (a batch step's batch, say) in worker-sized tasks, so that every worker takes part in each chunk."""
    return [chunk[start:start + CHUNK_SAMPLES] for start in range(0, len(chunk), CHUNK_SAMPLES)]


def finished(chunk: list[Sample], tasks: list) -> list[Sample]:
    """The chunk with its tasks' outcomes taken, in order."""
    outcomes = (outcome for task in tasks for outcome in task.get())
    for sample, outcome in zip(chunk, outcomes):
        sample.take(outcome)
    return chunk


@ENGINES.register("local")
class LocalEngine:
    def __init__(self, stages: list[Stage], config: RecipeConfig):
        global _stages
        _stages = stages
        self.workers = default_workers() if config.workers is None else config.workers
        self.pool = None

    def map_samples(self, stage: int, segment: int, chunks: Iterable[list[Sample]]) -> Iterator[list[Sample]]:
        """Apply a segment to each chunk, in order, with up to three chunks (and at least two tasks per worker) in
        flight, so that the workers are busy while the consumer runs a model on the chunk before."""
        if self.pool is None:
            yield from (apply_segment(_stages[stage], _stages[stage].segments[segment], chunk, core_threads().map)
                        for chunk in chunks)
            return
        pending: deque = deque()  # (chunk, its tasks)
        in_flight = 0
        for chunk in chunks:
            tasks = [self.pool.apply_async(run_segment, ((stage, segment, part),)) for part in tasks_of(chunk)]
            pending.append((chunk, tasks))
            in_flight += len(tasks)
            while in_flight >= max(2 * self.workers, 3 * len(tasks)):
                in_flight -= len(pending[0][1])
                yield finished(*pending.popleft())
        while pending:
            yield finished(*pending.popleft())

    def run_stage(self, run: StageRun, shards: list[int], progress: Callable[[int], None]) -> None:
        if not shards:
            return
        for step in run.stage.all_steps:
            step.load()  # before the fork, so that the workers inherit the models their prepare uses
        if self.workers > 0 and any(segment.in_workers for segment in run.stage.segments):
            self.pool = multiprocessing.get_context("fork").Pool(self.workers, initializer=_start_worker)
        try:
            for shard in shards:
                process_shard(run, shard, self.map_samples, progress)
        finally:
            self.stop_workers()

    def stop_workers(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def close(self) -> None:
        self.stop_workers()


from vlp.recipes import engine_ray  # noqa: E402,F401  (registration; Ray itself is imported only when it is used)
