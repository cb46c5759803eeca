"""The captions of a sample that steps score or count: ``txt`` (the original) and key.json fields that synthetic
caption steps fill (a string or a list each), cleaned as training cleans them."""
from __future__ import annotations

from vlp.recipes.sample import Sample

MAX_CHARS = 4096  # vlp.config.CaptionConfig's max_chars: a caption training would skip is not read here either


def captions_of(sample: Sample, fields: list[str]) -> list[tuple[str, str]]:
    """(name, caption) of every usable caption in ``fields``, in order; a list field's captions are named
    ``FIELD_0``, ``FIELD_1``, ... Absent, empty or non-text entries are left out."""
    from vlp.data.decode import BadSample, clean_caption  # vlp.data imports torch: not when the recipe loads

    found = []
    for name in fields:
        value = sample.members.get("txt") if name == "txt" else sample.json.get(name)
        texts = [(f"{name}_{i}", text) for i, text in enumerate(value)] if isinstance(value, list) else [(name, value)]
        for label, text in texts:
            try:
                found.append((label, clean_caption(text, MAX_CHARS)))
            except BadSample:
                continue
    return found
