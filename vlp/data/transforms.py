"""Image preprocessing that follows the image tower's own size, mean, std and interpolation."""
from __future__ import annotations

import torch
from torchvision.transforms import v2 as T


def _interpolation(name: str) -> T.InterpolationMode:
    return {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
            "nearest": T.InterpolationMode.NEAREST}.get(name, T.InterpolationMode.BICUBIC)


def to_rgb(image):
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


def image_transform(visual, train: bool = False, crop_scale: tuple[float, float] = (0.6, 1.0)) -> T.Compose:
    """PIL image -> normalized float tensor [3, S, S]; ``visual`` is an image tower."""
    size, interp = visual.image_size, _interpolation(visual.interpolation)
    resize = ([T.RandomResizedCrop(size, scale=crop_scale, interpolation=interp, antialias=True)] if train
              else [T.Resize(size, interpolation=interp, antialias=True), T.CenterCrop(size)])
    return T.Compose([
        T.Lambda(to_rgb),  # a named function, so workers started by spawn can unpickle the transform
        *resize,  # on the PIL image, as OpenCLIP does, so exported models see the same pixels
        T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=list(visual.mean), std=list(visual.std)),
    ])
