"""Turning raw bytes into an RGB image and clean captions, or a :class:`BadSample` that names the reason.

Every reason is a short snake_case name; the stream counts skipped samples by it and the training log shows
``bad/<reason>`` counts.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile


# PIL raises on a truncated file only when asked to; a half-decoded image would otherwise train silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is the counter it is skipped under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


BAD_REASONS = ("missing_image", "empty_image", "unknown_format", "corrupt_image", "too_large", "missing_caption",
               "empty_caption", "caption_not_utf8", "caption_too_long", "malformed_caption", "missing_file",
               "bad_shard", "truncated_shard", "unreadable_shard")


HIGH_BIT_MODES = {"I;16": 257.0, "I;16B": 257.0, "I;16L": 257.0, "I": 257.0, "F": None}


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for every mode: alpha composited on white, 16-bit and float scaled rather than clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in HIGH_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float32)
        divisor = HIGH_BIT_MODES[image.mode]
        if divisor is None:  # float images: stretch their own range
            low, high = float(pixels.min()), float(pixels.max())
            pixels = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        else:
            pixels = pixels / divisor
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def decode_image(data, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Bytes (or an already-open PIL image) -> RGB PIL image. The pixel count is checked from the header, before
    any pixel is decoded. ``draft_size``: let a JPEG decode at 1/2, 1/4 or 1/8 scale while both sides stay at
    least this many pixels."""
    if isinstance(data, Image.Image):
        return _to_rgb(data)
    if data is None:
        raise BadSample("missing_image")
    if len(data) == 0:
        raise BadSample("empty_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise BadSample("too_large", f"{width}x{height}")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            return _to_rgb(image)
    except BadSample:
        raise
    except Image.UnidentifiedImageError:
        raise BadSample("unknown_format") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise BadSample("too_large") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, ZeroDivisionError, MemoryError):
        raise BadSample("corrupt_image") from None


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding pixels; BadSample when there is no image."""
    if not data:
        raise BadSample("missing_image" if data is None else "empty_image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Image.UnidentifiedImageError:
        raise BadSample("unknown_format") from None
    except Image.DecompressionBombError:
        raise BadSample("too_large") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError):
        raise BadSample("corrupt_image") from None


def clean_caption(text, max_chars: int) -> str:
    """Bytes or str -> stripped str; raises BadSample for missing, non-UTF-8, empty or absurdly long text."""
    if text is None:
        raise BadSample("missing_caption")
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise BadSample("caption_not_utf8") from None
    if not isinstance(text, str):
        raise BadSample("malformed_caption", type(text).__name__)
    text = " ".join(text.split())  # newlines and runs of spaces in alt-text carry no meaning
    if not text:
        raise BadSample("empty_caption")
    if len(text) > max_chars:
        raise BadSample("caption_too_long", f"{len(text)} characters")
    return text
