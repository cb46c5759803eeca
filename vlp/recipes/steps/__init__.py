"""Recipe steps, one module each, registered in ``STEPS`` by the name a recipe uses.

A step is a class with a ``Config`` dataclass (its options: the recipe's keys, type-checked, unknown keys rejected
naming the valid ones) and a constructor ``(name, config)``; ``name`` is the step's name in this recipe (its type
unless the recipe sets ``name:``), under which its scores, drops and synthetic captions are recorded. A
constructor that finds a value unusable raises ``vlp.errors.ConfigError`` naming the key; the engine adds the
recipe file and the step. Steps must be deterministic: the same sample gives the same verdict in any process, in
any run (seed any randomness from ``sample.key``).

Three kinds, by what a step needs to decide:

- :class:`SampleStep` — one sample at a time, cheap, in the worker processes: text and image filters, rule-based
  caption rewrites. ``apply(sample) -> Verdict``.
- :class:`BatchStep` — model inference, in the main process, on batches of up to ``batch_size`` surviving samples
  of a shard (a ``batch_size`` config key sets it); load the model on first use, once. ``apply_batch(samples) ->
  list[Verdict]``, one per sample, in order. E.g. a recaptioner adding synthetic captions.
- :class:`GlobalStep` — decisions that need every sample of every shard: dedup, decontamination, keep-top-fraction,
  cluster balancing. ``signatures(samples)`` runs in the main process on batches of each shard's survivors and
  returns one signature per sample (a list, or an array with one row per sample); the engine keeps them on disk,
  then calls ``decide(ids, signatures)`` once with every survivor's ``(shard index, key)`` in input order and the
  signatures concatenated in that order; it returns one Verdict per id. A global step ends a stage: the steps
  before it have run on every shard before it decides, and the steps after it see only what it kept.
  ``summary(ids, signatures, verdicts)`` may return a JSON-able dict for the report: an analysis-only step (concept
  frequencies, say) is a global step whose ``decide`` keeps everything and whose ``summary`` holds the table.

Work per sample that a batch or global step needs before it sees the sample (decoding and preprocessing an image for
a model, hashing an image) goes in ``prepare(sample)``: the engine runs it in the worker processes (threads, where
there are none) on the samples that reach the step, and the step finds the result in ``sample.inputs[self.name]``.
A step that decodes images there sets ``decode_size`` (the JPEG draft size it decodes at, ``sample.decoded(size)``):
when it is the first step of a stage to read the image, the read check decodes at that size, and the decode is
shared. ``load()`` loads what the step needs (its model) in the main process; the local engine calls it before it
starts the stage's workers, which inherit it, so ``prepare`` can use it.

A :class:`vlp.recipes.sample.Verdict` (made with ``keep(**scores)`` or ``drop(reason, **scores)``) keeps or drops
the sample; drop reasons are short snake_case names, counted per step in the report; scores are floats, written to
the kept sample's ``key.json`` under ``scores.<step name>`` and drawn as histograms, with the values returned by
``thresholds()`` marked. A step that adds captions calls ``sample.add_captions(field, texts, source)``: they go to
``key.json[field]`` (by convention a ``field`` config key defaulting to the step's name), the source to
``key.json["caption_sources"][field]``, and the original ``txt`` stays. A step that raises
``vlp.data.BadSample`` (as ``sample.image`` does for undecodable bytes) drops the sample under its reason.

Adding a step: one module here defining the class with ``@STEPS.register("name")``, and its import below.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict
from vlp.utils import Registry

STEPS: Registry = Registry("recipe step")


class Step:
    kind: ClassVar[str]
    Config: ClassVar[type]

    prepares: ClassVar[bool] = False  # whether ``prepare`` does anything (the engine skips it otherwise)

    def __init__(self, name: str, config):
        self.name, self.config = name, config

    def load(self) -> None:
        """Load what the step needs (a model), in the main process, before the stage's workers start."""

    @property
    def decode_size(self) -> int | None:
        """The JPEG draft size ``prepare`` decodes images at (None: full size)."""
        return None

    def prepare(self, sample: Sample):
        """Per-sample work done in the workers before this (batch or global) step sees the sample; the result goes
        to ``sample.inputs[self.name]``."""
        return None

    def thresholds(self) -> dict[str, list[float]]:
        """Score name -> the cut-offs this step applies to it, marked on the report's histograms."""
        return {}


class SampleStep(Step):
    kind = "sample"

    def apply(self, sample: Sample) -> Verdict:
        raise NotImplementedError


class BatchStep(Step):
    kind = "batch"

    @property
    def batch_size(self) -> int:
        return getattr(self.config, "batch_size", 64)

    def apply_batch(self, samples: list[Sample]) -> list[Verdict]:
        raise NotImplementedError


class GlobalStep(Step):
    kind = "global"

    @property
    def batch_size(self) -> int:
        return getattr(self.config, "batch_size", 256)

    def signatures(self, samples: list[Sample]):
        raise NotImplementedError

    def decide(self, ids: list[tuple[int, str]], signatures) -> list[Verdict]:
        raise NotImplementedError

    def summary(self, ids: list[tuple[int, str]], signatures, verdicts: list[Verdict]) -> dict | None:
        return None


@functools.cache
def core_threads() -> ThreadPoolExecutor:
    """One thread per core, shared: ``prepare`` where the engine has no worker processes, and the model steps'
    own decoding (PIL's decoders and resizes release the GIL)."""
    from vlp.recipes.steps.similarity import cores

    return ThreadPoolExecutor(cores(), thread_name_prefix="recipe")


def bounds(low, high) -> list[float]:
    """The thresholds of a [low, high] option pair that are set."""
    return [value for value in (low, high) if value is not None]


def check_range(config, low: str, high: str) -> None:
    """Reject a negative bound, or a lower bound above the upper one, naming the keys."""
    low_value, high_value = getattr(config, low), getattr(config, high)
    for key, value in ((low, low_value), (high, high_value)):
        if value is not None and value < 0:
            raise ConfigError(f"config key '{key}' must be at least 0, got {value}")
    if low_value is not None and high_value is not None and low_value > high_value:
        raise ConfigError(f"config key '{low}' ({low_value}) is above '{high}' ({high_value})")


from vlp.recipes.steps import (  # noqa: E402,F401  (registration)
    caption_length, clip_score, cluster_balance, concept_frequency, decontaminate, embedding_dedup, exact_dedup,
    image_size, language, phash_dedup, recaption, retrieval_caption, rewrite_llm, rewrite_rules, text_patterns,
    unique_words)
