"""One shard through one stage: read it in chunks, apply the previous global step's verdicts, run the stage's steps
(sample steps through the engine's workers, batch steps here), then commit the survivors, the signatures for the
global step that ends the stage, and the decisions file, in that order: the decisions file marks the shard done."""
from __future__ import annotations

import functools
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
from vlp.recipes.stages import Segment, Stage
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


def apply_sample_steps(steps: list[Step], samples: list[Sample], keep_decoded: bool = False) -> list[Sample]:
    """The steps on each sample in turn. Its decoded image is let go once its steps are done, unless
    ``keep_decoded`` (a draft decode that the next step's ``prepare`` reuses), so that a chunk of full-size
    images is never held at once."""
    for sample in samples:
        for step in steps:
            if sample.dropped:
                break
            try:
                verdict = step.apply(sample)
            except BadSample as bad:  # e.g. an image that does not decode
                verdict = drop(bad.reason)
            sample.judge(step.name, verdict)
        if not keep_decoded:
            sample.forget_image()
    return samples


def prepare_inputs(step: Step, samples: list[Sample], map_each: Callable = map) -> None:
    """``step.prepare`` on the live samples (through ``map_each``: ``core_threads().map`` where there are no worker
    processes), into ``sample.inputs[step.name]``; a BadSample drops the sample under the step."""
    def prepared(sample: Sample):
        try:
            return step.prepare(sample)
        except BadSample as bad:
            return bad
        finally:
            sample.forget_image()

    live = [sample for sample in samples if not sample.dropped]
    for sample, result in zip(live, map_each(prepared, live)):
        if isinstance(result, BadSample):
            sample.judge(step.name, drop(result.reason))
        else:
            sample.inputs[step.name] = result


def apply_segment(stage: Stage, segment: Segment, samples: list[Sample], map_each: Callable = map) -> list[Sample]:
    """The segment's sample steps, then what the step it feeds prepares; what a worker does with a chunk."""
    decode_size = stage.decode_size()
    for sample in samples:
        sample.decode_size = decode_size
    apply_sample_steps(segment.steps, samples, keep_decoded=segment.prepares and decode_size is not None)
    if segment.prepares:
        prepare_inputs(segment.feeds, samples, map_each)
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
        consumed(step, batch)
    return samples


def consumed(step: Step, samples: list[Sample]) -> None:
    """Free what was prepared for ``step`` once it has seen the samples."""
    for sample in samples:
        sample.inputs.pop(step.name, None)


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
        if segment.in_workers:
            stream = map_samples(run.stage.index, index, stream)
        if segment.feeds is not None and segment.feeds.kind == "batch":
            stream = map(functools.partial(apply_batch_step, segment.feeds), stream)
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
        consumed(step, batch)
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
    write_decisions(layout, stage.index, shard, records)


def write_decisions(layout: Layout, stage: int, shard: int, records: list[dict]) -> None:
    """The decisions file: one line per sample that entered the stage; written last, it marks the shard done."""
    atomic_write_text(layout.decisions(stage, shard), "".join(
        json.dumps(record, ensure_ascii=False) + "\n" for record in records))
