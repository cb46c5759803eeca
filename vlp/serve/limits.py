"""What one request may ask of the server, and the checks that turn a request beyond it into a clear 4xx.

Plain Python, no FastAPI: ``vlp serve`` builds its ``--max-*`` flags from :class:`Limits`' fields before any web
framework is imported, and the checks raise :class:`RequestError`, which the app turns into ``{"detail": ...}``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from vlp.config import ConfigError


class RequestError(Exception):
    """A request the server will not serve: ``status`` is the HTTP status, ``detail`` one sentence saying why."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int = field(default=10 * 2**20, metadata={"help": "largest image upload, in bytes"})
    max_pixels: int = field(default=40_000_000, metadata={
        "help": "largest image, width × height, read from the header before any pixel is decoded"})
    max_labels: int = field(default=1000, metadata={"help": "most class names in one classify request"})
    max_text_chars: int = field(default=1000, metadata={"help": "longest text, label or text query, in characters"})
    max_texts: int = field(default=256, metadata={"help": "most texts in one /v1/embed/text request"})

    def __post_init__(self):
        for spec in fields(self):
            if getattr(self, spec.name) < 1:
                raise ConfigError(f"{spec.name} must be at least 1, got {getattr(self, spec.name)}")

    @property
    def max_body_bytes(self) -> int:
        """The largest request body worth reading: the largest image in base64, plus the most labels or texts at
        full length, each character possibly JSON-escaped to six bytes (``\\uXXXX``), plus room for the rest."""
        base64_image = 4 * math.ceil(self.max_image_bytes / 3)
        return base64_image + max(self.max_labels, self.max_texts) * (6 * self.max_text_chars + 8) + 64 * 1024


def check_image_bytes(size: int, limits: Limits) -> None:
    if size > limits.max_image_bytes:
        raise RequestError(413, f"the image is {size} bytes; the limit is {limits.max_image_bytes} bytes")


def check_labels(labels: str | list[str], limits: Limits) -> list[str]:
    """Class names from a list or one comma-separated string, stripped, empty names dropped."""
    names = labels.split(",") if isinstance(labels, str) else labels
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise RequestError(422, "labels: give at least one class name")
    if len(names) > limits.max_labels:
        raise RequestError(422, f"labels: {len(names)} class names; the limit is {limits.max_labels}")
    return check_lengths(names, limits, "labels")


def check_texts(texts: list[str], limits: Limits) -> list[str]:
    if not texts:
        raise RequestError(422, "texts: give at least one text")
    if len(texts) > limits.max_texts:
        raise RequestError(422, f"texts: {len(texts)} texts; the limit is {limits.max_texts} per request")
    return check_lengths(texts, limits, "texts")


def check_lengths(texts: list[str], limits: Limits, what: str) -> list[str]:
    for i, text in enumerate(texts):
        check_length(text, limits, f"{what}[{i}]")
    return texts


def check_length(text: str, limits: Limits, what: str) -> str:
    if len(text) > limits.max_text_chars:
        raise RequestError(422, f"{what} is {len(text)} characters; the limit is {limits.max_text_chars}")
    return text
