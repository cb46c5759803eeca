"""``image_size``: drop images whose shorter side is too small, whose aspect ratio is too extreme, or whose file is
too small or too large."""
from __future__ import annotations

from dataclasses import dataclass

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict, drop, keep
from vlp.recipes.steps import STEPS, SampleStep, bounds, check_range


@dataclass
class ImageSizeConfig:
    min_side: int | None = None  # pixels of the shorter side; None: no bound
    max_aspect: float | None = None  # longer side / shorter side, at least 1
    min_bytes: int | None = None  # encoded file size
    max_bytes: int | None = None


@STEPS.register("image_size")
class ImageSize(SampleStep):
    Config = ImageSizeConfig

    def __init__(self, name: str, config: ImageSizeConfig):
        super().__init__(name, config)
        check_range(config, "min_bytes", "max_bytes")
        if config.min_side is not None and config.min_side < 1:
            raise ConfigError(f"config key 'min_side' must be at least 1, got {config.min_side}")
        if config.max_aspect is not None and config.max_aspect < 1:
            raise ConfigError(f"config key 'max_aspect' must be at least 1, got {config.max_aspect}")

    def apply(self, sample: Sample) -> Verdict:
        c = self.config
        width, height = sample.image_size
        scores = {"min_side": min(width, height), "aspect": max(width, height) / min(width, height),
                  "bytes": len(sample.image_bytes)}
        if c.min_side is not None and scores["min_side"] < c.min_side:
            return drop("too_small", **scores)
        if c.max_aspect is not None and scores["aspect"] > c.max_aspect:
            return drop("extreme_aspect", **scores)
        if c.min_bytes is not None and scores["bytes"] < c.min_bytes:
            return drop("file_too_small", **scores)
        if c.max_bytes is not None and scores["bytes"] > c.max_bytes:
            return drop("file_too_large", **scores)
        return keep(**scores)

    def thresholds(self) -> dict[str, list[float]]:
        c = self.config
        return {"min_side": bounds(c.min_side, None), "aspect": bounds(None, c.max_aspect),
                "bytes": bounds(c.min_bytes, c.max_bytes)}
