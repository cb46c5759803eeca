"""``unique_words``: drop repetitive captions ("shoe shoe shoe shoe"), whose distinct words are too small a
fraction of their words. Words are lower-cased runs of letters and digits."""
from __future__ import annotations

import re
from dataclasses import dataclass

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict, drop, keep
from vlp.recipes.steps import STEPS, SampleStep

WORD = re.compile(r"\w+")


@dataclass
class UniqueWordsConfig:
    min_fraction: float = 0.5  # distinct words / words
    min_words: int = 4  # shorter captions are kept as they are: "a dog" cannot be judged repetitive


@STEPS.register("unique_words")
class UniqueWords(SampleStep):
    Config = UniqueWordsConfig

    def __init__(self, name: str, config: UniqueWordsConfig):
        super().__init__(name, config)
        if not 0 <= config.min_fraction <= 1:
            raise ConfigError(f"config key 'min_fraction' must be in [0, 1], got {config.min_fraction}")

    def apply(self, sample: Sample) -> Verdict:
        words = WORD.findall(sample.caption.lower())
        if len(words) < self.config.min_words:
            return keep()
        fraction = len(set(words)) / len(words)
        return keep(unique_fraction=fraction) if fraction >= self.config.min_fraction else drop(
            "repetitive", unique_fraction=fraction)

    def thresholds(self) -> dict[str, list[float]]:
        return {"unique_fraction": [self.config.min_fraction]}
