"""``language``: keep captions in the chosen languages, identified with langdetect (55 languages; its profiles ship
inside the package, so it works offline). Seeded, so a caption gets the same answer in any process.

Drops are counted by the language found (``language_fr``), as ``uncertain_language`` when a kept language wins
with less than ``min_confidence``, and as ``language_unknown`` when the caption has no letters to go by. The score
``confidence`` is the probability of the most likely kept language."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
from langdetect.lang_detect_exception import LangDetectException

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict, drop, keep
from vlp.recipes.steps import STEPS, SampleStep

LANGUAGES = sorted(os.listdir(PROFILES_DIRECTORY))  # ISO 639-1 codes, plus zh-cn and zh-tw


@dataclass
class LanguageConfig:
    keep: list[str] = field(default_factory=lambda: ["en"])
    min_confidence: float = 0.0  # of the kept language; 0 keeps a caption whenever a kept language is the likeliest
    seed: int = 0  # langdetect samples n-grams at random


@STEPS.register("language")
class LanguageFilter(SampleStep):
    Config = LanguageConfig

    def __init__(self, name: str, config: LanguageConfig):
        super().__init__(name, config)
        unknown = [code for code in config.keep if code not in LANGUAGES]
        if unknown or not config.keep:
            raise ConfigError(f"config key 'keep' names unknown language(s) {unknown}; valid: {', '.join(LANGUAGES)}"
                              if unknown else "config key 'keep' lists no language")
        if not 0 <= config.min_confidence <= 1:
            raise ConfigError(f"config key 'min_confidence' must be in [0, 1], got {config.min_confidence}")
        self.factory = None  # the profiles take half a second to load: once per process, on first use

    def probabilities(self, text: str) -> dict[str, float]:
        if self.factory is None:
            self.factory = DetectorFactory()
            self.factory.load_profile(PROFILES_DIRECTORY)
            self.factory.set_seed(self.config.seed)
        detector = self.factory.create()
        detector.append(text)
        return {found.lang: found.prob for found in detector.get_probabilities()}

    def apply(self, sample: Sample) -> Verdict:
        try:
            found = self.probabilities(sample.caption)
        except LangDetectException:  # no letters to go by
            found = {}
        if not found:
            return drop("language_unknown", confidence=0.0)
        confidence = max(found.get(code, 0.0) for code in self.config.keep)
        likeliest = max(found, key=found.get)
        if likeliest not in self.config.keep:
            return drop(f"language_{likeliest.replace('-', '_')}", confidence=confidence)
        if confidence < self.config.min_confidence:
            return drop("uncertain_language", confidence=confidence)
        return keep(confidence=confidence)

    def thresholds(self) -> dict[str, list[float]]:
        return {"confidence": [self.config.min_confidence]} if self.config.min_confidence else {}
