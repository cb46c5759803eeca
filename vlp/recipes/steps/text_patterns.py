"""``text_patterns``: drop captions that hold a URL, HTML markup, or boilerplate matched by a list of regular
expressions (alt-text such as "click here", "image not found", "IMG_1234.jpg")."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict, drop, keep
from vlp.recipes.steps import STEPS, SampleStep

URL = re.compile(r"(?i)\b(?:https?://|www\.)\S+|\b[\w-]+\.(?:com|net|org|io|info|biz|co\.uk|de|fr|ru|jp|cn)\b")
HTML = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>|&(?:[a-zA-Z]+|#\d+|#x[0-9a-fA-F]+);")  # not "x < y > z"
BOILERPLATE = [
    r"(?i)\bclick (?:here|to (?:enlarge|zoom|view))\b",
    r"(?i)\b(?:image|photo|picture) (?:not (?:found|available)|unavailable|coming soon)\b",
    r"(?i)\bno (?:image|photo|picture) available\b",
    r"(?i)^\s*(?:img|dsc|dscn|image|photo|pic|screenshot)[_ -]?\d+",  # camera and screenshot file names
    r"(?i)\.(?:jpe?g|png|gif|webp|bmp)\s*$",  # a file name as the whole caption
    r"(?i)\b(?:all rights reserved|copyright)\b|©",
    r"(?i)\b(?:buy|shop|order) now\b|\bfree shipping\b",
    r"(?i)^\s*(?:placeholder|thumbnail|untitled|null|none|undefined)\s*$",
]


@dataclass
class TextPatternsConfig:
    urls: bool = True
    html: bool = True
    boilerplate: list[str] = field(default_factory=lambda: list(BOILERPLATE))  # regular expressions (re.search)


@STEPS.register("text_patterns")
class TextPatterns(SampleStep):
    Config = TextPatternsConfig

    def __init__(self, name: str, config: TextPatternsConfig):
        super().__init__(name, config)
        self.boilerplate = []
        for i, pattern in enumerate(config.boilerplate):
            try:
                self.boilerplate.append(re.compile(pattern))
            except re.error as err:
                raise ConfigError(f"config key 'boilerplate[{i}]' is not a valid regular expression "
                                  f"({err}): {pattern!r}") from None

    def apply(self, sample: Sample) -> Verdict:
        caption = sample.caption
        if self.config.urls and URL.search(caption):
            return drop("url")
        if self.config.html and HTML.search(caption):
            return drop("html")
        if any(pattern.search(caption) for pattern in self.boilerplate):
            return drop("boilerplate")
        return keep()
