"""The embedded Fashion-MNIST set (``default``) as a source."""
from __future__ import annotations

from vlp.data.default_data import load_default
from vlp.data.sources import SOURCES, RawSample, Source


@SOURCES.register("default")
class EmbeddedSource(Source):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.data = load_default("val" if cfg.split in ("val", "validation", "test") else "train")
        self.class_names, self.templates = list(self.data.class_names), list(self.data.templates)

    def __len__(self) -> int:
        return len(self.data)

    def raw(self, index: int) -> RawSample:
        return RawSample(str(index), self.data.pil(index), {"txt": self.data.captions[index]},
                         int(self.data.labels[index]))
