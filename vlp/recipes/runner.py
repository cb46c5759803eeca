"""A recipe run from start to end: claim the output directory, run each stage's unfinished shards on the engine,
let each global step decide once, re-shard the survivors, write the report. Every piece of work is committed by an
atomic rename and skipped when it is already there, so a killed run started again finishes with the same bytes."""
from __future__ import annotations

import os
import pickle
import shutil
import sys

from tqdm import tqdm

from vlp.config import SourceConfig
from vlp.data.sources.webdataset import WebDatasetSource, declared_size
from vlp.errors import ConfigError
from vlp.recipes.engine import ENGINES
from vlp.recipes.layout import Layout
from vlp.recipes.recipe import Recipe
from vlp.recipes.report import load_report, write_report
from vlp.recipes.sample import Sample
from vlp.recipes.shard_job import StageRun, concatenate, write_decisions
from vlp.recipes.sink import kept_count, kept_keys, write_sink
from vlp.recipes.stages import Stage, plan_stages
from vlp.utils import atomic_write_bytes


def decide(stage: Stage, layout: Layout, shards: int) -> None:
    """The global step that ends ``stage``, over every shard's survivors in input order; its verdicts (and summary)
    are kept for the next stage."""
    step, ids, parts = stage.ends_with, [], []
    for shard in range(shards):
        keys, signatures = pickle.loads(layout.signatures(stage.index, shard).read_bytes())
        ids += [(shard, key) for key in keys]
        parts.append(signatures)
    signatures = concatenate(parts)
    verdicts = step.decide(ids, signatures)
    if len(verdicts) != len(ids):
        raise RuntimeError(f"recipe step {step.name} decided {len(verdicts)} of {len(ids)} samples")
    summary = step.summary(ids, signatures, verdicts)
    atomic_write_bytes(layout.global_result(stage.index),
                       pickle.dumps({"verdicts": dict(zip(ids, verdicts)), "summary": summary}))


def stage_inputs(stage: Stage, layout: Layout, shards: list[str]) -> list[str]:
    if stage.index == 0:
        return shards
    return [str(layout.work_shard(stage.index - 1, shard)) for shard in range(len(shards))]


def stage_size(stage: Stage, layout: Layout, shards: list[str]) -> int | None:
    """Samples entering the stage, for the progress bar: the previous stage's survivors, or the input's declared
    sizes (sizes.json) when it has them."""
    if stage.index > 0:
        return sum(kept_count(layout, stage.index - 1, shard) for shard in range(len(shards)))
    sizes = [declared_size(path) for path in shards]
    return None if None in sizes else sum(sizes)


def record_verdicts(stage: Stage, layout: Layout, shards: int, verdicts: dict) -> None:
    """The decisions of a stage that only applies the previous global step's verdicts, from the verdicts alone;
    the sink applies them to the samples."""
    for shard in range(shards):
        if layout.decisions(stage.index, shard).is_file():
            continue
        records = []
        for key in kept_keys(layout, stage.index - 1, shard):
            sample = Sample(key)
            sample.judge(stage.applies.name, verdicts[(shard, key)])
            records.append(sample.record())
        write_decisions(layout, stage.index, shard, records)


def run_stage(stage: Stage, stages: int, engine, layout: Layout, shards: list[str]) -> None:
    verdicts = pickle.loads(layout.global_result(stage.index - 1).read_bytes())["verdicts"] if stage.applies else None
    if stage.only_applies:
        record_verdicts(stage, layout, len(shards), verdicts)
        return
    run = StageRun(stage, stage_inputs(stage, layout, shards), layout, verdicts)
    pending = [shard for shard in range(len(shards)) if not layout.decisions(stage.index, shard).is_file()]
    done = sum(sum(1 for _ in layout.decisions(stage.index, shard).open())
               for shard in range(len(shards)) if shard not in pending)
    names = ", ".join(step.name for step in stage.all_steps)
    with tqdm(total=stage_size(stage, layout, shards), initial=done, unit="sample", file=sys.stderr,
              desc=f"stage {stage.index + 1}/{stages} ({names})", dynamic_ncols=True) as bar:
        engine.run_stage(run, pending, bar.update)
    if stage.ends_with is not None and not layout.global_result(stage.index).is_file():
        decide(stage, layout, len(shards))


def input_shards(recipe: Recipe) -> list[str]:
    try:
        return WebDatasetSource(SourceConfig(path=recipe.config.input, type="webdataset")).shards
    except ConfigError as err:  # no shard matches
        raise ConfigError(f"recipe {recipe.path}: input: {err}") from None


def build_engine(recipe: Recipe, stages: list[Stage]):
    """The recipe's engine, built before the output directory is touched, so that an unknown engine, or one that
    is not installed, is one line and leaves nothing behind."""
    try:
        engine_class = ENGINES.get(recipe.config.engine)
    except KeyError as err:
        raise ConfigError(f"recipe {recipe.path}: {err.args[0]}") from None
    return engine_class(stages, recipe.config)


def run_recipe(recipe: Recipe, overwrite: bool = False) -> dict:
    """Run (or finish) ``recipe``; returns the report. A complete earlier run of the same recipe is left as it is."""
    shards = input_shards(recipe)
    stages = plan_stages(recipe.steps)
    engine = build_engine(recipe, stages)
    layout = Layout(recipe.config.output)
    try:
        layout.claim(recipe.resolved, recipe.fingerprint, [os.path.abspath(path) for path in shards], overwrite)
        if layout.complete:
            shutil.rmtree(layout.work, ignore_errors=True)  # a run killed while tidying up
            return load_report(layout)
        layout.remove_temporaries()
        for stage in stages:
            run_stage(stage, len(stages), engine, layout, shards)
    finally:
        engine.close()
    sizes = write_sink(layout, stages[-1], len(shards), recipe.config.sink.shard_size)
    report = write_report(recipe, stages, layout, shards, sizes)
    shutil.rmtree(layout.work, ignore_errors=True)
    return report
