"""``rewrite_rules``: rule-based caption rewrites, added as synthetic captions beside the original ``txt``:
synonym swaps from a small built-in table (extended with ``synonyms``) and order perturbations (comma-separated
clauses rotated, "X and Y" swapped). Randomness is seeded by ``seed`` and the sample key, so a sample gets the same
rewrites in every run and process. A caption no rule changes gets none. Never drops."""
from __future__ import annotations

import dataclasses
import random
import re

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict, keep
from vlp.recipes.steps import STEPS, SampleStep

# words that can stand for each other in an image caption whatever the context
SYNONYM_GROUPS = [
    ["photo", "picture", "image", "snapshot"], ["photos", "pictures", "images"], ["small", "little", "tiny"],
    ["big", "large"], ["shows", "depicts"], ["showing", "depicting"], ["man", "guy"], ["woman", "lady"],
    ["child", "kid"], ["children", "kids"], ["car", "automobile"], ["sofa", "couch"], ["sea", "ocean"],
    ["street", "road"], ["rock", "stone"], ["beautiful", "pretty", "lovely"], ["happy", "cheerful"],
    ["fast", "quick"], ["sneaker", "trainer"], ["sneakers", "trainers"], ["pullover", "sweater", "jumper"],
    ["trousers", "pants"], ["t-shirt", "tee"], ["patterned", "printed"], ["plain", "simple"], ["shiny", "glossy"],
]
WORD = re.compile(r"(\w[\w'-]*)")
# a comma starts a clause only before words such as these: "dark, patterned sandal" is one noun phrase
CLAUSE_OPENERS = ("with|without|on|in|at|near|under|over|behind|beside|by|from|against|while|and|which|where|"
                  "showing|wearing|holding|sitting|standing|lying|looking")
CLAUSE_BREAK = re.compile(rf"\s*;\s*|\s*,\s*(?=(?:{CLAUSE_OPENERS})\b)", re.IGNORECASE)
AND_PAIR = re.compile(r"\b(\w+) and (\w+)\b")


@dataclasses.dataclass
class RewriteRulesConfig:
    field: str | None = None  # key.json field for the rewrites; None: the step's name
    count: int = 1  # rewrites per caption, at most (fewer when the rules allow fewer distinct ones)
    swap_probability: float = 0.5  # per word that has synonyms
    reorder: bool = True  # also perturb clause and word order
    synonyms: dict = dataclasses.field(default_factory=dict)  # more synonyms: word -> [alternatives]
    seed: int = 0


def synonym_table(extra: dict) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for group in SYNONYM_GROUPS:
        for word in group:
            table[word] = [other for other in group if other != word]
    for word, alternatives in extra.items():
        if not isinstance(alternatives, list) or not all(isinstance(a, str) for a in alternatives):
            raise ConfigError(f"config key 'synonyms.{word}' must be a list of words, got {alternatives!r}")
        table[str(word).lower()] = sorted(set(table.get(str(word).lower(), [])) | set(alternatives))
    return table


def same_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def article_for(word: str, article: str) -> str:
    """"a" or "an" before ``word``, in the case of ``article``: "a photo" -> "an image"."""
    return same_case("an" if word[:1].lower() in "aeiou" else "a", article)


def starts_sentence(clause: str) -> bool:
    """Whether the clause's capital is only the sentence's ("A shoe", "Red shoe"), not a name's ("NASA", "I")."""
    first = clause.split()[0]
    return first[:1].isupper() and first not in ("I", "I'm") and (first[1:].islower() or len(first) == 1)


def reorder(text: str, rng: random.Random) -> str:
    """Rotate comma-separated clauses ("a shoe, with laces, on a table" -> "with laces, on a table, a shoe"); with
    a single clause, swap one "X and Y" pair ("black and white" -> "white and black")."""
    body = text.rstrip(".!?")
    end = text[len(body):]
    clauses = [c for c in CLAUSE_BREAK.split(body) if c]
    if len(set(clauses)) < 2:
        pairs = list(AND_PAIR.finditer(body))
        if not pairs:
            return text
        pair = pairs[rng.randrange(len(pairs))]
        return f"{body[:pair.start()]}{pair[2]} and {pair[1]}{body[pair.end():]}{end}"
    shift = rng.randrange(1, len(clauses))
    rotated = clauses[shift:] + clauses[:shift]
    if starts_sentence(clauses[0]):
        rotated = [c[:1].lower() + c[1:] if c is clauses[0] else c for c in rotated]
        rotated[0] = rotated[0][:1].upper() + rotated[0][1:]
    return ", ".join(rotated) + end


@STEPS.register("rewrite_rules")
class RewriteRules(SampleStep):
    Config = RewriteRulesConfig

    def __init__(self, name: str, config: RewriteRulesConfig):
        super().__init__(name, config)
        if config.count < 1:
            raise ConfigError(f"config key 'count' must be at least 1, got {config.count}")
        if not 0 <= config.swap_probability <= 1:
            raise ConfigError(f"config key 'swap_probability' must be in [0, 1], got {config.swap_probability}")
        self.table = synonym_table(config.synonyms)
        self.field = config.field or name
        self.source = "rules:synonyms+reorder" if config.reorder else "rules:synonyms"

    def swap_synonyms(self, text: str, rng: random.Random) -> str:
        parts = WORD.split(text)  # odd positions are words
        for i in range(1, len(parts), 2):
            alternatives = self.table.get(parts[i].lower())
            if alternatives and rng.random() < self.config.swap_probability:
                parts[i] = same_case(rng.choice(alternatives), parts[i])
                if i >= 2 and parts[i - 2].lower() in ("a", "an"):
                    parts[i - 2] = article_for(parts[i], parts[i - 2])
        return "".join(parts)

    def rewrite(self, caption: str, rng: random.Random) -> str:
        text = self.swap_synonyms(caption, rng)
        return reorder(text, rng) if self.config.reorder and rng.random() < 0.5 else text

    def apply(self, sample: Sample) -> Verdict:
        caption, rng = sample.caption, random.Random(f"{self.config.seed}:{sample.key}")
        rewrites: list[str] = []
        for _ in range(4 * self.config.count):  # a few tries: a try may change nothing, or repeat an earlier one
            text = self.rewrite(caption, rng)
            if text != caption and text not in rewrites:
                rewrites.append(text)
            if len(rewrites) == self.config.count:
                break
        if rewrites:
            sample.add_captions(self.field, rewrites, self.source)
        return keep(rewrites=len(rewrites))
