"""``exact_dedup``: drop images whose bytes are identical to an earlier sample's (SHA-1 of the encoded image),
keeping the first in input order (shard order, then order within the shard). Its summary counts the groups."""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from vlp.recipes.sample import Sample, Verdict, drop, keep
from vlp.recipes.steps import STEPS, GlobalStep


@dataclass
class ExactDedupConfig:
    pass


@STEPS.register("exact_dedup")
class ExactDedup(GlobalStep):
    Config = ExactDedupConfig
    prepares = True

    def prepare(self, sample: Sample) -> bytes:
        return hashlib.sha1(sample.image_bytes).digest()

    def signatures(self, samples: list[Sample]) -> list[bytes]:
        return [sample.inputs[self.name] if self.name in sample.inputs else self.prepare(sample)
                for sample in samples]

    def decide(self, ids: list[tuple[int, str]], signatures: list[bytes]) -> list[Verdict]:
        seen: set[bytes] = set()
        verdicts = []
        for digest in signatures:
            verdicts.append(drop("duplicate") if digest in seen else keep())
            seen.add(digest)
        return verdicts

    def summary(self, ids, signatures: list[bytes], verdicts: list[Verdict]) -> dict:
        sizes = Counter(signatures)
        repeated = [size for size in sizes.values() if size > 1]
        return {"unique_images": len(sizes), "duplicated_images": len(repeated),
                "largest_group": max(repeated, default=1)}
