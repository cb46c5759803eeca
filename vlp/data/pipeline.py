"""Per-sample preparation in the workers (captions, decode, views) and batch collation with tokenization."""
from __future__ import annotations

import random

import torch

from vlp.config import CaptionConfig
from vlp.data.decode import BadSample, clean_caption, decode_image
from vlp.data.sources import RawSample
from vlp.data.transforms import TrainViews


def caption_candidates(fields: dict[str, object], max_chars: int) -> list[tuple[str, str]]:
    """Every usable (field, caption) of a sample, in field order; raises the first problem when there is none."""
    found, problem = [], BadSample("missing_caption")
    for name, value in fields.items():
        for text in value if isinstance(value, (list, tuple)) else [value]:
            try:
                found.append((name, clean_caption(text, max_chars)))
            except BadSample as bad:
                if problem.reason == "missing_caption":
                    problem = bad
    if not found:
        raise problem
    return found


class CaptionPolicy:
    """``sample``: one caption, uniformly over all of a sample's captions, or field by field with the configured
    probabilities (then uniformly within the field). ``all``: up to ``max_per_image`` captions, in field order."""

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg

    def __call__(self, fields: dict[str, object], rng: random.Random) -> tuple:
        found = caption_candidates(fields, self.cfg.max_chars)
        if self.cfg.policy == "all":
            kept = found[: self.cfg.max_per_image]
            return [text for _, text in kept], [name for name, _ in kept]
        if self.cfg.weights:
            names = [n for n in dict.fromkeys(name for name, _ in found) if self.cfg.weights.get(n, 0) > 0]
            if not names:
                raise BadSample("missing_caption", f"none of {sorted(self.cfg.weights)}")
            chosen = rng.choices(names, weights=[self.cfg.weights[n] for n in names])[0]
            found = [item for item in found if item[0] == chosen]
        name, text = found[rng.randrange(len(found))]
        return text, name


class PrepareSample:
    """RawSample + seed -> the sample's fields. Captions are checked before the image is decoded."""

    def __init__(self, views: TrainViews, captions: CaptionConfig, max_pixels: int, fast_decode: bool):
        self.views, self.policy, self.max_pixels = views, CaptionPolicy(captions), max_pixels
        self.draft_size = views.decode_size if fast_decode else None

    def __call__(self, raw: RawSample, seed: int) -> dict:
        caption, source = self.policy(raw.captions, random.Random(seed))
        image = decode_image(raw.image, self.max_pixels, self.draft_size)
        with torch.random.fork_rng(devices=[]):  # torchvision's augmentations draw from the global generator
            # the CPU generator alone: torch.manual_seed would also queue a CUDA seeding, recording a stack trace
            # per sample, 1.6 ms each
            torch.default_generator.manual_seed(seed)
            fields = self.views(image, torch.Generator().manual_seed(seed))
        fields.update(caption=caption, caption_source=source)
        return fields


class CollateBatch:
    """Stacks the tensor fields; tokenizes captions into ``tokens`` [B, L], or with several captions per image
    [B, K, L] plus ``caption_mask`` [B, K]."""

    def __init__(self, tokenizer, max_per_image: int | None = None):
        self.tokenizer, self.max_per_image = tokenizer, max_per_image

    def __call__(self, items: list[dict]) -> dict:
        batch = {name: torch.stack([item[name] for item in items])
                 for name in items[0] if torch.is_tensor(items[0][name])}
        captions = [item["caption"] for item in items]
        batch["captions"] = captions
        batch["caption_source"] = [item["caption_source"] for item in items]
        if self.max_per_image is None:
            batch["tokens"] = self.tokenizer(captions)
        else:
            k = self.max_per_image
            padded = [texts + [""] * (k - len(texts)) for texts in captions]
            tokens = self.tokenizer([text for texts in padded for text in texts])
            batch["tokens"] = tokens.view(len(items), k, -1)
            batch["caption_mask"] = torch.tensor([[i < len(texts) for i in range(k)] for texts in captions])
        return batch
