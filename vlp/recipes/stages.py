"""A recipe's steps split into stages at its global steps. A stage runs its sample and batch steps shard by shard;
a global step ends it, deciding once over every shard's survivors; the next stage starts by applying those
decisions. Stage 0 starts with the read check, which drops what training could not read."""
from __future__ import annotations

from dataclasses import dataclass, field

from vlp.recipes.read_check import ReadCheck
from vlp.recipes.steps import GlobalStep, Step

CHUNK_SAMPLES = 64  # samples per task sent to a worker: small enough to balance, large enough to amortize


@dataclass
class Stage:
    index: int
    steps: list[Step] = field(default_factory=list)  # sample and batch steps, in recipe order
    ends_with: GlobalStep | None = None  # decides over all shards once the stage is done everywhere
    applies: GlobalStep | None = None  # the previous stage's global step, whose verdicts come first

    @property
    def segments(self) -> list[list[Step]]:
        """The steps in runs of one kind: each run of sample steps goes to the workers as one task per chunk,
        each batch step runs in the main process."""
        runs: list[list[Step]] = []
        for step in self.steps:
            if runs and step.kind == "sample" and runs[-1][-1].kind == "sample":
                runs[-1].append(step)
            else:
                runs.append([step])
        return runs

    @property
    def chunk_size(self) -> int:
        """Samples read at a time: at least every batch step's batch, so that batches are full."""
        batched = [step.batch_size for step in [*self.steps, self.ends_with] if step and step.kind != "sample"]
        return max([CHUNK_SAMPLES, *batched])

    @property
    def all_steps(self) -> list[Step]:
        """Every step that judges this stage's samples, in order."""
        return [step for step in (self.applies, *self.steps, self.ends_with) if step is not None]


def plan_stages(steps: list[Step]) -> list[Stage]:
    stages = [Stage(0, [ReadCheck()])]
    for step in steps:
        if isinstance(step, GlobalStep):
            stages[-1].ends_with = step
            stages.append(Stage(len(stages), applies=step))
        else:
            stages[-1].steps.append(step)
    return stages
