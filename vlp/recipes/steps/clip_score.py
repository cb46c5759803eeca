"""``clip_score``: the cosine similarity of a sample's image and its captions under a CLIP model (DataComp's CLIP
score, LAION's filter), and CapFilt-style caption filtering. Keeps samples whose best caption scores at least
``threshold``, or the ``keep_fraction`` of all samples with the best scores; with neither it only scores.

``captions`` names the captions scored: ``txt`` (the original) and key.json fields such as a recaptioner's (a
string or a list each). Every caption's score is recorded: ``clip_score`` is the sample's best, and with more than
``txt`` each caption has its own (``txt``, ``recaption_0``, ...). With ``kept_field`` (CapFilt, threshold only) the
captions that reach the threshold, the original included, are written to that key.json field, and training that
reads it (``caption_fields: [json.NAME]``) sees only them; a sample is dropped only when none of its captions
reaches the threshold. The original ``txt`` itself is never removed: the step protocol forbids changing it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict, drop, keep
from vlp.recipes.steps import STEPS
from vlp.recipes.steps.caption_fields import captions_of
from vlp.recipes.steps.embedding import ModelOptions, ModelStep

BEST = "clip_score"  # the score a sample is kept by: its best caption's


@dataclass
class ClipScoreConfig(ModelOptions):
    captions: list[str] = field(default_factory=lambda: ["txt"])  # txt and/or key.json fields, e.g. [txt, recaption]
    threshold: float | None = None  # keep samples whose best caption scores at least this
    keep_fraction: float | None = None  # or keep this fraction of all samples, best scores first
    kept_field: str | None = None  # CapFilt: the key.json field for the captions reaching ``threshold``


def check_config(config: ClipScoreConfig) -> None:
    if not config.captions:
        raise ConfigError("config key 'captions' must name at least one caption field, e.g. [txt]")
    if config.threshold is not None and config.keep_fraction is not None:
        raise ConfigError("set 'threshold' or 'keep_fraction', not both")
    if config.keep_fraction is not None and not 0 < config.keep_fraction <= 1:
        raise ConfigError(f"config key 'keep_fraction' must be in (0, 1], got {config.keep_fraction}")
    if config.kept_field is not None and config.threshold is None:
        # a caption is judged as it is scored; keep_fraction's cut-off is known only once every sample is scored
        raise ConfigError("config key 'kept_field' needs 'threshold'")
    if config.kept_field in config.captions or config.kept_field in ("txt", "scores", "caption_sources"):
        raise ConfigError(f"config key 'kept_field' must be a new key.json field, got '{config.kept_field}'")


def best_scores(signatures: list[dict[str, float]]) -> np.ndarray:
    """Each sample's best caption score; NaN for a sample without a caption."""
    return np.array([scores.get(BEST, np.nan) for scores in signatures], dtype=np.float64)


@STEPS.register("clip_score")
class ClipScore(ModelStep):
    Config = ClipScoreConfig

    def __init__(self, name: str, config: ClipScoreConfig):
        super().__init__(name, config)
        check_config(config)
        self.cutoff = config.threshold  # keep_fraction: the lowest kept score, once decided

    def signatures(self, samples: list[Sample]) -> list[dict[str, float]]:
        """Per sample, its scores: ``clip_score`` (the best caption's) and, with more than ``txt`` scored, one
        per caption; none for a sample without a caption to score."""
        captions = [captions_of(sample, self.config.captions) for sample in samples]
        texts = [text for found in captions for _, text in found]
        owners = np.repeat(np.arange(len(samples)), [len(found) for found in captions])
        images = self.images(samples)
        similarity = (self.encoder.texts(texts) * images[owners]).sum(axis=1) if texts else np.empty(0)
        scores, start = [], 0
        for sample, found in zip(samples, captions):
            mine = similarity[start:start + len(found)].tolist()
            start += len(found)
            each = {} if self.config.captions == ["txt"] else dict(zip((name for name, _ in found), mine))
            scores.append({BEST: max(mine), **each} if mine else {})
            if self.config.kept_field is not None:
                self.keep_captions(sample, found, mine)
        return scores

    def keep_captions(self, sample: Sample, found: list[tuple[str, str]], scores: list[float]) -> None:
        """CapFilt: write the captions reaching the threshold to ``kept_field``. Done here, where the sample is at
        hand and the engine writes it afterwards; ``decide`` sees only scores."""
        passing = [text for (_, text), score in zip(found, scores) if score >= self.config.threshold]
        if passing:
            sample.add_captions(self.config.kept_field, passing,
                                f"{self.name}: {', '.join(self.config.captions)} scoring >= {self.config.threshold}")

    def decide(self, ids: list[tuple[int, str]], signatures: list[dict[str, float]]) -> list[Verdict]:
        best = best_scores(signatures)
        kept = self.kept(best)
        return [keep(**scores) if is_kept else drop("missing_caption" if np.isnan(score) else "low_clip_score",
                                                    **scores)
                for scores, score, is_kept in zip(signatures, best, kept)]

    def kept(self, best: np.ndarray) -> np.ndarray:
        """Which samples stay: at or above the threshold, or the best ``keep_fraction`` (ties in input order)."""
        scored = ~np.isnan(best)
        if self.config.threshold is not None:
            return scored & (np.nan_to_num(best, nan=-np.inf) >= self.config.threshold)
        if self.config.keep_fraction is None:
            return np.ones(len(best), dtype=bool)
        count = min(round(self.config.keep_fraction * len(best)), int(scored.sum()))
        order = np.argsort(-np.nan_to_num(best, nan=-np.inf), kind="stable")[:count]
        kept = np.zeros(len(best), dtype=bool)
        kept[order] = True
        self.cutoff = float(best[order[-1]]) if count else None
        return kept

    def thresholds(self) -> dict[str, list[float]]:
        return {BEST: [] if self.cutoff is None else [self.cutoff]}

    def summary(self, ids, signatures: list[dict[str, float]], verdicts: list[Verdict]) -> dict:
        best = best_scores(signatures)
        scored = best[~np.isnan(best)]
        return {"samples": len(best), "scored": len(scored), "kept": sum(verdict.keep for verdict in verdicts),
                "score_cutoff": self.cutoff,
                "median_score": float(np.median(scored)) if len(scored) else None}
