"""``concept_frequency``: how often each concept is mentioned in the captions (REAL, Parashar et al. 2024: the
long tail of pretraining concepts predicts zero-shot failures, and a concept's most frequent synonym is the best
prompt for it). Analysis only: keeps every sample.

``concepts`` maps each concept to its synonyms (``{sneaker: [sneakers, trainer]}``, the concept's own name counting
too), inline or as the path of a YAML/JSON file. A synonym matches as whole words, case-insensitively: "trainer"
matches "Trainer," and "trainer-led" but not "trainers". A sample counts once per concept, however many of its
``captions`` (``txt`` and key.json fields) mention it. The summary lists the concepts by count with each synonym's
count and the most frequent one, the long tail (the mentioned concepts counted at most the ``tail_quantile``
quantile of the mentioned concepts' counts) and the concepts never mentioned.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict, keep
from vlp.recipes.steps import STEPS, GlobalStep
from vlp.recipes.steps.caption_fields import captions_of

WORD = re.compile(r"\w+")  # a synonym and a caption are compared as runs of these, so matches are whole words


@dataclass
class ConceptFrequencyConfig:
    concepts: Any = None  # {concept: [synonyms]}, or the path of a YAML/JSON file holding such a mapping
    captions: list[str] = field(default_factory=lambda: ["txt"])  # txt and/or key.json fields
    tail_quantile: float = 0.2  # the long tail: mentioned concepts counted at most this quantile of their counts


def words(text: str) -> tuple[str, ...]:
    return tuple(WORD.findall(text.casefold()))


def read_concepts(value: Any) -> dict[str, list[str]]:
    """concept -> its terms (its own name first, then its synonyms), from the option or the file it names."""
    if isinstance(value, str):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"config key 'concepts': file not found: {value}")
        try:
            value = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config key 'concepts': {value} is not YAML/JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(value, dict) or not value:
        raise ConfigError("config key 'concepts' must be a mapping concept -> [synonyms], or a YAML/JSON file "
                          f"holding one; got {value!r}")
    concepts = {}
    for name, synonyms in value.items():
        synonyms = [synonyms] if isinstance(synonyms, str) else synonyms or []
        if not isinstance(synonyms, list) or not all(isinstance(s, str) and words(s) for s in [str(name), *synonyms]):
            raise ConfigError(f"config key 'concepts.{name}': synonyms must be a list of words, got {synonyms!r}")
        concepts[str(name)] = list(dict.fromkeys([str(name), *synonyms]))
    return concepts


@STEPS.register("concept_frequency")
class ConceptFrequency(GlobalStep):
    Config = ConceptFrequencyConfig

    def __init__(self, name: str, config: ConceptFrequencyConfig):
        super().__init__(name, config)
        if not 0 <= config.tail_quantile <= 1:
            raise ConfigError(f"config key 'tail_quantile' must be in [0, 1], got {config.tail_quantile}")
        self.concepts = read_concepts(config.concepts)
        self.terms = [(concept, term) for concept, terms in self.concepts.items() for term in terms]
        self.term_ids: dict[tuple[str, ...], list[int]] = {}  # a term's words -> its ids (two concepts may share)
        for index, (_, term) in enumerate(self.terms):
            self.term_ids.setdefault(words(term), []).append(index)
        self.lengths = sorted({len(key) for key in self.term_ids})

    def signatures(self, samples: list[Sample]) -> list[tuple[int, ...]]:
        """Per sample, the ids of the terms its captions mention, each once."""
        return [self.mentions([text for _, text in captions_of(sample, self.config.captions)]) for sample in samples]

    def mentions(self, texts: list[str]) -> tuple[int, ...]:
        found: set[int] = set()
        for text in texts:
            tokens = words(text)
            for length in self.lengths:
                for start in range(len(tokens) - length + 1):
                    found.update(self.term_ids.get(tokens[start:start + length], ()))
        return tuple(sorted(found))

    def decide(self, ids: list[tuple[int, str]], signatures: list[tuple[int, ...]]) -> list[Verdict]:
        return [keep() for _ in ids]

    def summary(self, ids, signatures: list[tuple[int, ...]], verdicts: list[Verdict]) -> dict:
        by_term = Counter(term for mentioned in signatures for term in mentioned)
        by_concept = Counter(concept for mentioned in signatures for concept in {self.terms[t][0] for t in mentioned})
        table = {}
        for concept in sorted(self.concepts, key=lambda c: (-by_concept[c], c)):
            terms = {term: by_term[i] for i, (owner, term) in enumerate(self.terms) if owner == concept}
            table[concept] = {"count": by_concept[concept], "synonyms": terms,
                              "most_frequent_synonym": max(terms, key=terms.get)}
        mentioned = [by_concept[concept] for concept in self.concepts if by_concept[concept]]
        cutoff = float(np.quantile(mentioned, self.config.tail_quantile)) if mentioned else 0.0
        return {"samples": len(signatures), "captions": self.config.captions, "concepts": table,
                "tail_cutoff": cutoff,
                "long_tail": sorted((c for c in self.concepts if 0 < by_concept[c] <= cutoff),
                                    key=lambda c: (by_concept[c], c)),
                "never_mentioned": sorted(c for c in self.concepts if not by_concept[c])}
