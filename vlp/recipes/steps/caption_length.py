"""``caption_length``: drop captions with too few or too many characters or words (whitespace-normalized)."""
from __future__ import annotations

from dataclasses import dataclass

from vlp.recipes.sample import Sample, Verdict, drop, keep
from vlp.recipes.steps import STEPS, SampleStep, bounds, check_range


@dataclass
class CaptionLengthConfig:
    min_chars: int | None = None  # None: no bound
    max_chars: int | None = None
    min_words: int | None = None
    max_words: int | None = None


@STEPS.register("caption_length")
class CaptionLength(SampleStep):
    Config = CaptionLengthConfig

    def __init__(self, name: str, config: CaptionLengthConfig):
        super().__init__(name, config)
        check_range(config, "min_chars", "max_chars")
        check_range(config, "min_words", "max_words")

    def apply(self, sample: Sample) -> Verdict:
        caption, c = sample.caption, self.config
        chars, words = len(caption), len(caption.split())
        for value, low, high, unit in ((chars, c.min_chars, c.max_chars, "chars"),
                                       (words, c.min_words, c.max_words, "words")):
            if low is not None and value < low:
                return drop(f"too_few_{unit}", chars=chars, words=words)
            if high is not None and value > high:
                return drop(f"too_many_{unit}", chars=chars, words=words)
        return keep(chars=chars, words=words)

    def thresholds(self) -> dict[str, list[float]]:
        c = self.config
        return {"chars": bounds(c.min_chars, c.max_chars), "words": bounds(c.min_words, c.max_words)}
