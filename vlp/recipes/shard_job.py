"""One shard through one stage: read it in chunks, apply the previous global step's verdicts, run the stage's steps
(sample steps through the engine's workers, batch steps here), then commit the survivors, the signatures for the
global step that ends the stage, and the decisions file, in that order: the decisions file marks the shard done."""
from __future__ import annotations

import itertools
import json
import pickle
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from vlp.data.decode import BadSample
from vlp.recipes.layout import Layout
from vlp.recipes.sample import Sample, Verdict, drop
from vlp.recipes.shards import ShardWriter, read_samples
from vlp.recipes.stages import Stage
from vlp.recipes.steps import BatchStep, Step
from vlp.utils import atomic_write_bytes, atomic_write_text

# (stage index, segment index, chunks) -> the chunks with the segment's sample steps applied, in order
MapSamples = Callable[[int, int, Iterable[list[Sample]]], Iterator[list[Sample]]]


@dataclass
class StageRun:
    stage: Stage
    inputs: list[str]  # the stage's input shard for each input shard index
    layout: Layout
    verdicts: dict | None  # the previous global step's verdicts by (shard index, key)


def apply_sample_steps(steps: list[Step], samples: list[Sample]) -> list[Sample]:
    for sample in samples:
        for step in steps:
            if sample.dropped:
                break
            try:
                verdict = step.apply(sample)
            except BadSample as bad:  # e.g. an image that does not decode
                verdict = drop(bad.reason)
            sample.judge(step.name, verdict)
    return samples


def judge_batch(step: Step, samples: list[Sample], verdicts: list[Verdict]) -> None:
    if len(verdicts) != len(samples):
        raise RuntimeError(f"recipe step {step.name} returned {len(verdicts)} verdicts for {len(samples)} samples")
    for sample, verdict in zip(samples, verdicts):
        sample.judge(step.name, verdict)


def apply_batch_step(step: BatchStep, samples: list[Sample]) -> list[Sample]:
    live = [sample for sample in samples if not sample.dropped]
    for start in range(0, len(live), step.batch_size):
        batch = live[start:start + step.batch_size]
        judge_batch(step, batch, step.apply_batch(batch))
    return samples


def chunks_of(run: StageRun, shard: int) -> Iterator[list[Sample]]:
    """The shard's samples in chunks, with the previous global step's verdicts applied."""
    samples = read_samples(run.inputs[shard])
    while chunk := list(itertools.islice(samples, run.stage.chunk_size)):
        if run.stage.applies is not None:
            judge_batch(run.stage.applies, chunk, [run.verdicts[(shard, sample.key)] for sample in chunk])
        yield chunk


def staged(run: StageRun, shard: int, map_samples: MapSamples) -> Iterator[list[Sample]]:
    """The shard's chunks through every segment of the stage: generators all the way, so that the workers work on
    later chunks while this process runs batch steps and writes earlier ones."""
    stream: Iterable[list[Sample]] = chunks_of(run, shard)
    for index, segment in enumerate(run.stage.segments):
        if segment[0].kind == "sample":
            stream = map_samples(run.stage.index, index, stream)
        else:
            stream = (apply_batch_step(segment[0], chunk) for chunk in stream)
    return iter(stream)


def concatenate(parts: list):
    """Signature batches joined: one array when the step returns arrays, else one list."""
    parts = [part for part in parts if len(part)]
    if parts and all(isinstance(part, np.ndarray) for part in parts):
        return np.concatenate(parts)
    return [item for part in parts for item in part]


def signatures_of(step, samples: list[Sample]) -> list:
    """The step's signatures of ``samples``, one entry per batch of its batch size."""
    parts = []
    for start in range(0, len(samples), step.batch_size):
        batch = samples[start:start + step.batch_size]
        parts.append(step.signatures(batch))
        if len(parts[-1]) != len(batch):
            raise RuntimeError(f"recipe step {step.name} returned {len(parts[-1])} signatures for {len(batch)} "
                               "samples")
    return parts


def process_shard(run: StageRun, shard: int, map_samples: MapSamples, progress: Callable[[int], None]) -> None:
    stage, layout = run.stage, run.layout
    records, keys, signatures = [], [], []  # signatures: one batch after another
    with ShardWriter(layout.work_shard(stage.index, shard)) as writer:
        for chunk in staged(run, shard, map_samples):
            survivors = [sample for sample in chunk if not sample.dropped]
            if stage.ends_with is not None:
                keys += [sample.key for sample in survivors]
                signatures += signatures_of(stage.ends_with, survivors)
            for sample in survivors:
                writer.add(sample.key, sample.output_members())
            records += [sample.record() for sample in chunk]
            progress(len(chunk))
    if stage.ends_with is not None:
        atomic_write_bytes(layout.signatures(stage.index, shard), pickle.dumps((keys, concatenate(signatures))))
    atomic_write_text(layout.decisions(stage.index, shard), "".join(
        json.dumps(record, ensure_ascii=False) + "\n" for record in records))
