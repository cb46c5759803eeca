"""Data recipes: clean WebDataset shards with a list of steps (filters, caption rewrites, dedup) and get cleaner
shards plus a report of what was removed and why. ``vlp recipe run data_recipes/NAME.yaml input=... output=...``.

The recipe format is in ``recipe.py``, the step protocol in ``steps/__init__.py``, the output directory and its
guarantees in ``layout.py``; ``runner.py`` ties them together. Only ``recipe`` and ``steps`` are imported here, so
a bad recipe fails before vlp.data (and torch) load.
"""
from __future__ import annotations

from vlp.recipes.recipe import Recipe, load_recipe
from vlp.recipes.sample import Sample, Verdict, drop, keep
from vlp.recipes.steps import STEPS, BatchStep, GlobalStep, SampleStep

__all__ = ["STEPS", "BatchStep", "GlobalStep", "Recipe", "Sample", "SampleStep", "Verdict", "drop", "keep",
           "load_recipe"]
