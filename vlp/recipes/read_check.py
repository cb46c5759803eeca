"""The check every input sample passes first, in stage 0: the members it needs, a usable caption and an image that
decodes, judged by vlp.data's own rules, so a kept sample is one training reads. Drops use vlp.data's bad-sample
reasons (``corrupt_image``, ``empty_caption``, ``truncated_shard``, ...; see docs/data.md) and the reader's
(``malformed_json``, ``duplicate_key``).

The image is decoded as the stage's first image-reading step will decode it (``Sample.decode_size``: a JPEG
draft, as vlp.data decodes for training), so that this decode is that step's too rather than a second one. A
draft decode still reads every byte of the compressed data, so a truncated or corrupt file fails it as it fails a
full decode."""
from __future__ import annotations

from vlp.config import CaptionConfig
from vlp.data.decode import clean_caption
from vlp.recipes.sample import Sample, Verdict, drop, keep
from vlp.recipes.steps import SampleStep

MAX_CHARS = CaptionConfig().max_chars


class ReadCheck(SampleStep):
    """Not a registered step: the engine puts it first. Its scores (caption words, shorter image side) give the
    report's before/after distributions."""

    def __init__(self):
        super().__init__("read", None)

    def apply(self, sample: Sample) -> Verdict:
        if sample.problem:
            return drop(sample.problem)
        caption = clean_caption(sample.members.get("txt"), MAX_CHARS)  # raises BadSample
        sample.decoded(sample.decode_size)  # raises BadSample
        return keep(words=len(caption.split()), min_side=min(sample.image_size))
