"""The ``ray`` engine: a stage's unfinished shards as a Ray Data dataset of shard indices, each shard processed on a
worker of a Ray cluster by the same ``process_shard`` as the local engine, so the stage plan, the commit of each
shard (survivors, signatures, then the decisions file), the global decisions on the driver, the sink and the report
are the local engine's and the output is the same bytes.

A stage of sample steps runs as Ray tasks, one shard each, with its sample steps in the task's own process. A
stage that holds a model (a batch step, or a step with a ``model`` option) runs on a pool of ``ray.actors`` actors
reserving ``ray.gpus_per_actor`` GPUs and ``ray.cpus_per_actor`` CPUs each: an actor keeps its steps, and the
models they load on first use, for every shard it is given. Input and output must be on a filesystem that every
node sees at the same path. Ray is an optional extra (``pip install 'vlp[ray]'``), imported only when this engine
is built."""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

from vlp.errors import ConfigError, DataError
from vlp.recipes.engine import ENGINES
from vlp.recipes.layout import Layout
from vlp.recipes.recipe import RecipeConfig
from vlp.recipes.shard_job import MapSamples, StageRun, apply_segment, process_shard
from vlp.recipes.stages import Stage
from vlp.recipes.steps import core_threads

logger = logging.getLogger(__name__)
ONE_LINE_ERRORS = (ConfigError, DataError, FileNotFoundError)  # a step's bad input: vlp.cli reports these in one line


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("engine 'ray' needs Ray, which is not installed: pip install 'vlp[ray]'") from None
    return ray


def loads_models(stage: Stage) -> bool:
    """Whether a step of the stage loads a model on first use: a batch step, or any step with a ``model`` option."""
    steps = [*stage.steps, stage.ends_with] if stage.ends_with else stage.steps
    return any(step.kind == "batch" or getattr(step.config, "model", None) for step in steps)


@dataclass
class StageJob:
    """What a worker needs for one stage's shards, sent once per stage; paths are absolute, as a worker's working
    directory is not the driver's."""

    stages: bytes  # pickled when the engine was built, before the driver ran any step (a decide may load a model)
    index: int
    inputs: list[str]
    output: str

    def stage_run(self) -> StageRun:
        return StageRun(pickle.loads(self.stages)[self.index], self.inputs, Layout(self.output), None)


def in_process(stage: Stage) -> MapSamples:
    """Sample steps in the worker's own process, ``prepare`` on its threads, as the local engine runs them with
    ``workers: 0``: the cluster's parallelism is across shards."""
    segments, threads = stage.segments, core_threads()
    return lambda _stage, segment, chunks: (apply_segment(stage, segments[segment], chunk, threads.map)
                                            for chunk in chunks)


def run_shard(run: StageRun, row: dict) -> dict:
    """The shard through the stage. An error that vlp reports in one line comes back in the row rather than raised,
    which Ray would bury in a traceback of its own."""
    shard, counts = int(row["shard"]), []
    try:
        process_shard(dataclasses.replace(run, verdicts=pickle.loads(row["verdicts"])), shard,
                      in_process(run.stage), counts.append)
    except ONE_LINE_ERRORS as err:
        return {"shard": shard, "samples": sum(counts), "error": pickle.dumps(err)}
    return {"shard": shard, "samples": sum(counts), "error": b""}


def shard_task(row: dict, job: StageJob) -> dict:
    return run_shard(job.stage_run(), row)


class ShardActor:
    """One actor of a model stage's pool: its steps, and the models they load, serve every shard it is given."""

    def __init__(self, job: StageJob):
        self.run = job.stage_run()

    def __call__(self, row: dict) -> dict:
        return run_shard(self.run, row)


def shard_rows(run: StageRun, shards: list[int]) -> list[dict]:
    """One row per shard, carrying the previous global step's verdicts on that shard's samples only."""
    own: dict[int, dict] = defaultdict(dict)
    for (shard, key), verdict in (run.verdicts or {}).items():
        own[shard][(shard, key)] = verdict
    return [{"shard": shard, "verdicts": pickle.dumps(own[shard])} for shard in shards]


def pickled(stages: list[Stage]) -> bytes:
    try:
        return pickle.dumps(stages)
    except (pickle.PicklingError, TypeError, AttributeError) as err:  # e.g. a step holding a lock or a lambda
        raise ConfigError(f"engine 'ray': the recipe's steps cannot be sent to Ray workers: {err}") from None


@ENGINES.register("ray")
class RayEngine:
    def __init__(self, stages: list[Stage], config: RecipeConfig):
        self.ray = import_ray()
        self.stages = pickled(stages)
        self.config = config.ray
        self.started = False  # whether this run started Ray (and so shuts it down), rather than found it running

    def connect(self) -> None:
        """Ray as the caller set it up, else the cluster at ``ray.address`` or $RAY_ADDRESS, else one running on
        this machine, else a new local instance."""
        if self.ray.is_initialized():  # by the caller (a notebook, a test), or by an earlier stage
            return
        address = self.config.address or os.environ.get("RAY_ADDRESS")
        try:
            self.ray.init(address=address or "auto")
        except ConnectionError as err:
            if address:
                raise ConfigError(f"ray.address: cannot connect to a Ray cluster at {address}: {err}") from None
            logger.warning("vlp recipe: no Ray cluster to join (no --ray-address, no RAY_ADDRESS, none started on "
                           "this machine): starting a local Ray instance, which uses this machine only")
            self.ray.init()
        self.started = True

    def run_stage(self, run: StageRun, shards: list[int], progress: Callable[[int], None]) -> None:
        if not shards:
            return
        self.connect()
        context = self.ray.data.DataContext.get_current()
        bars, context.enable_progress_bars = context.enable_progress_bars, False  # the stage's bar counts samples
        try:
            for row in self.processed(run, shards).iter_rows():
                if row["error"]:
                    raise pickle.loads(row["error"])
                progress(row["samples"])
        finally:
            context.enable_progress_bars = bars

    def processed(self, run: StageRun, shards: list[int]):
        """The shards' results, ``{shard, samples, error}``, computed as they are iterated."""
        job = StageJob(self.stages, run.stage.index, [os.path.abspath(path) for path in run.inputs],
                       os.path.abspath(run.layout.root))
        # one block per shard: each shard is a task (or an actor call) of its own
        rows = self.ray.data.from_items(shard_rows(run, shards), override_num_blocks=len(shards))
        if not loads_models(run.stage):
            return rows.map(shard_task, fn_args=(job,), num_cpus=1)
        return rows.map(ShardActor, fn_constructor_args=(job,), num_cpus=self.config.cpus_per_actor,
                        num_gpus=self.config.gpus_per_actor,
                        compute=self.ray.data.ActorPoolStrategy(size=self.config.actors))

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
