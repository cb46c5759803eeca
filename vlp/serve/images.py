"""Uploaded bytes -> the model's input tensor, or a :class:`RequestError` that says what is wrong with the image.

Decoding goes through ``vlp.data.decode.decode_image``, the function training uses on untrusted shards: the pixel
count is checked from the header before any pixel is decoded, and every way PIL can fail becomes a reason.
"""
from __future__ import annotations

import base64
import binascii

import torch

from vlp.data.decode import BadSample, decode_image
from vlp.serve.limits import Limits, RequestError, check_image_bytes

# Why a BadSample reason makes the image unusable, phrased for the client
_UNREADABLE = {"missing_image": "no image was sent", "empty_image": "the image is empty",
               "unknown_format": "the image is not in a format PIL can read",
               "corrupt_image": "the image is corrupt or truncated"}


def decode_base64(text: str) -> bytes:
    """Standard base64, optionally as a data URL (``data:image/png;base64,...``)."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "image: not valid base64") from None


def load_pixels(data: bytes, limits: Limits, preprocess, image_size: int) -> torch.Tensor:
    """Image file bytes -> the preprocessed [3, S, S] tensor the image tower takes."""
    check_image_bytes(len(data), limits)
    try:
        image = decode_image(data, limits.max_pixels)
    except BadSample as bad:
        if bad.reason == "too_large":
            size = str(bad).partition(": ")[2]  # "WxH" when the header could be read
            raise RequestError(413, f"the image{f' ({size})' if size else ''} has more than the limit of "
                                    f"{limits.max_pixels} pixels") from None
        raise RequestError(400, _UNREADABLE.get(bad.reason, f"the image cannot be used ({bad.reason})")) from None
    _check_resized_area(image.size, image_size, limits)
    return preprocess(image)


def _check_resized_area(size: tuple[int, int], image_size: int, limits: Limits) -> None:
    """Preprocessing scales the shorter side to ``image_size`` before the centre crop, so a thin strip within
    the pixel limit (say 1 × 40,000) would grow to far more pixels than it had: bound that too."""
    width, height = size
    resized = image_size * image_size * max(width, height) / max(min(width, height), 1)
    if resized > limits.max_pixels:
        raise RequestError(413, f"the image's aspect ratio ({width}x{height}) is too extreme: resized to "
                                f"{image_size} pixels on its shorter side it would exceed {limits.max_pixels} pixels")
