"""The embedded default data: a Fashion-MNIST subset (MIT, Zalando SE; see ``embedded/NOTICE-fashion-mnist``).

12,000 training and 2,000 held-out 28x28 grey images of 10 clothing classes. Each image gets a natural-language
caption built from its class and two attributes measured from its own pixels (tone and texture), so that
captions say more than the label and text-to-image retrieval is a real task: e.g.
"a photo of a light, patterned sneaker." Held-out images get one canonical caption; training images get one of
several phrasings, fixed per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
from PIL import Image

CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
ZERO_SHOT_TEMPLATES = ["a photo of a {}.", "a photo of the {}.", "a {}."]

# Measured on the training split: tertiles of mean garment intensity, and per-class medians of the mean
# absolute vertical gradient inside the garment, so each attribute splits every class roughly evenly.
TONE_EDGES = (146.0, 185.0)
TONES = ("dark", "mid-grey", "light")
TEXTURE_MEDIANS = (18.0, 17.0, 15.4, 18.1, 17.4, 50.0, 16.4, 43.7, 24.5, 30.8)
TEXTURES = ("plain", "patterned")
CANONICAL_TEMPLATE = "a photo of a {tone}, {texture} {name}."
TRAIN_TEMPLATES = (
    CANONICAL_TEMPLATE,
    "a {tone} {name} with a {texture} look.",
    "{texture} {name} in a {tone} shade.",
    "a {texture}, {tone} {name}.",
    "a photo of a {name}.",
)


@dataclass
class CaptionedImages:
    images: np.ndarray | list  # uint8 [N, H, W] grey images, or a list of RGB PIL images
    labels: np.ndarray | None  # int64 [N], when the images have classes
    captions: list[str]
    class_names: list[str] | None = None  # when labels index a list of class names, for zero-shot evaluation
    templates: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def pil(self, index: int) -> Image.Image:
        image = self.images[index]
        return image if isinstance(image, Image.Image) else Image.fromarray(image, mode="L")


def attributes(image: np.ndarray, label: int) -> tuple[str, str]:
    pixels = image.astype(np.float32)
    garment = pixels > 30
    tone_value = float(pixels[garment].mean()) if garment.any() else 0.0
    inner = garment[1:] & garment[:-1]
    texture_value = float((np.abs(np.diff(pixels, axis=0)) * inner).sum() / max(int(inner.sum()), 1))
    tone = TONES[int(np.searchsorted(TONE_EDGES, tone_value))]
    texture = TEXTURES[int(texture_value > TEXTURE_MEDIANS[label])]
    return tone, texture


def caption(image: np.ndarray, label: int, template: str = CANONICAL_TEMPLATE) -> str:
    tone, texture = attributes(image, label)
    return template.format(tone=tone, texture=texture, name=CLASS_NAMES[label])


@lru_cache(maxsize=2)
def load_default(split: str) -> CaptionedImages:
    """``split`` is 'train' or 'val'."""
    if split not in ("train", "val"):
        raise ValueError(f"unknown split '{split}' of the default data; valid: train, val")
    with resources.files("vlp.data").joinpath("embedded/fashion_mnist_subset.npz").open("rb") as f:
        arrays = np.load(f)
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].astype(np.int64)
    if split == "val":
        captions = [caption(img, int(lab)) for img, lab in zip(images, labels)]
    else:
        captions = [caption(img, int(lab), TRAIN_TEMPLATES[i % len(TRAIN_TEMPLATES)])
                    for i, (img, lab) in enumerate(zip(images, labels))]
    return CaptionedImages(images, labels, captions, CLASS_NAMES, ZERO_SHOT_TEMPLATES)
