"""Dynamic micro-batching: concurrent requests share one forward pass.

Requests put single items (a preprocessed image, a text) on a queue. One worker thread takes the first item,
keeps collecting until it holds ``max_batch`` items or ``max_wait_ms`` has passed since the first, then runs one
batched forward per kind and resolves each request's future with its own row. A forward over 32 images costs far
less than 32 forwards of one, so under load throughput grows with the batch while the added latency stays at
most ``max_wait_ms``. ``max_batch=1`` serves one item at a time, the baseline.

All model work happens on the worker thread, including other calls (``call``: building a zero-shot classifier),
so torch is never entered from two threads at once and the event loop never blocks on it.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial

_CALL = "call"  # the kind of a job that runs alone: a function, not an item of a batch
_STOP = None


@dataclass
class _Job:
    kind: str
    payload: object
    future: Future


@dataclass
class BatchStats:
    """What the worker did: ``items`` batched items served in ``forwards`` forward passes."""

    items: int = 0
    forwards: int = 0
    largest_batch: int = 0
    calls: int = 0


class MicroBatcher:
    """``runners`` maps a kind to a function from a list of items to a sequence of results, one per item (a
    tensor [N, D] is one); ``submit(kind, item)`` returns a future of that item's result."""

    def __init__(self, runners: Mapping[str, Callable[[list], Sequence]], max_batch: int = 32,
                 max_wait_ms: float = 5.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be at least 1 and max_wait_ms at least 0, got {max_batch}, "
                             f"{max_wait_ms}")
        self.runners, self.max_batch, self.max_wait = dict(runners), max_batch, max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="vlp-serve-model", daemon=True)
        self._worker.start()

    def submit(self, kind: str, item) -> Future:
        if kind not in self.runners:
            raise KeyError(f"no runner for {kind!r}; known: {', '.join(self.runners)}")
        return self._put(kind, item)

    def call(self, func: Callable, *args) -> Future:
        """Run ``func(*args)`` on the worker thread, between batches."""
        return self._put(_CALL, partial(func, *args))

    def close(self) -> None:
        """Finish the jobs already queued, then stop the worker."""
        self._queue.put(_STOP)
        self._worker.join()

    def _put(self, kind: str, payload) -> Future:
        future = Future()
        self._queue.put(_Job(kind, payload, future))
        return future

    def _work(self) -> None:
        while (first := self._queue.get()) is not _STOP:
            jobs, stop = self._collect(first)
            for kind in dict.fromkeys(job.kind for job in jobs):  # kinds in arrival order
                self._run(kind, [job for job in jobs if job.kind == kind])
            if stop:
                return

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` and whatever arrives until the batch is full or the wait is over; True if told to stop."""
        jobs, deadline = [first], time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            try:
                job = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self, kind: str, jobs: list[_Job]) -> None:
        if kind == _CALL:
            for job in jobs:
                self.stats.calls += 1
                _resolve(job.future, job.payload)
            return
        self.stats.items += len(jobs)
        self.stats.forwards += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        try:
            results = self.runners[kind]([job.payload for job in jobs])
        except Exception as err:  # noqa: BLE001 - every waiting request must hear of it, not hang
            for job in jobs:
                job.future.set_exception(err)
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)


def _resolve(future: Future, func: Callable) -> None:
    try:
        future.set_result(func())
    except Exception as err:  # noqa: BLE001 - the caller re-raises it
        future.set_exception(err)
