"""A recipe's steps split into stages at its global steps. A stage runs its sample and batch steps shard by shard;
a global step ends it, deciding once over every shard's survivors; the next stage starts by applying those
decisions. Stage 0 starts with the read check, which drops what training could not read."""
from __future__ import annotations

from dataclasses import dataclass, field

from vlp.recipes.read_check import ReadCheck
from vlp.recipes.steps import GlobalStep, SampleStep, Step

CHUNK_SAMPLES = 64  # samples per task sent to a worker: small enough to balance, large enough to amortize


@dataclass
class Segment:
    """A run of sample steps, done in the workers, and the batch or global step that takes its survivors next
    (``feeds``; None at the end of a stage without a global step), whose ``prepare`` the workers run too."""

    steps: list[SampleStep]
    feeds: Step | None

    @property
    def prepares(self) -> bool:
        return self.feeds is not None and self.feeds.prepares

    @property
    def in_workers(self) -> bool:
        """Whether the workers have anything to do for this segment."""
        return bool(self.steps) or self.prepares


@dataclass
class Stage:
    index: int
    steps: list[Step] = field(default_factory=list)  # sample and batch steps, in recipe order
    ends_with: GlobalStep | None = None  # decides over all shards once the stage is done everywhere
    applies: GlobalStep | None = None  # the previous stage's global step, whose verdicts come first

    @property
    def segments(self) -> list[Segment]:
        """The stage as segments: each batch step, and the global step that ends the stage, gets the run of sample
        steps before it (possibly none); the sample steps after the last batch step of a stage without a global
        step end it."""
        segments, run = [], []
        for step in self.steps:
            if step.kind == "sample":
                run.append(step)
            else:
                segments.append(Segment(run, step))
                run = []
        if run or self.ends_with is not None:
            segments.append(Segment(run, self.ends_with))
        return segments

    @property
    def chunk_size(self) -> int:
        """Samples read at a time: at least every batch step's batch, so that batches are full."""
        batched = [step.batch_size for step in [*self.steps, self.ends_with] if step and step.kind != "sample"]
        return max([CHUNK_SAMPLES, *batched])

    @property
    def only_applies(self) -> bool:
        """A stage with nothing to do but apply the previous global step's verdicts (a recipe ending with a global
        step): its decisions follow from the verdicts alone, and its survivors are read from the stage before."""
        return self.applies is not None and not self.steps and self.ends_with is None

    @property
    def stored_in(self) -> int:
        """The stage whose work shards hold this stage's survivors (and, for a stage that only applies verdicts,
        its dropped samples too)."""
        return self.index - 1 if self.only_applies else self.index

    @property
    def all_steps(self) -> list[Step]:
        """Every step that judges this stage's samples, in order."""
        return [step for step in (self.applies, *self.steps, self.ends_with) if step is not None]

    def decode_size(self) -> int | None:
        """The draft size of the stage's first step that decodes images at a draft in ``prepare``, at which the
        read check decodes them too (None: full size)."""
        sizes = [segment.feeds.decode_size for segment in self.segments if segment.prepares]
        return next((size for size in sizes if size is not None), None)


def plan_stages(steps: list[Step]) -> list[Stage]:
    stages = [Stage(0, [ReadCheck()])]
    for step in steps:
        if isinstance(step, GlobalStep):
            stages[-1].ends_with = step
            stages.append(Stage(len(stages), applies=step))
        else:
            stages[-1].steps.append(step)
    return stages
