"""Image preprocessing that follows the image tower's own size, mean, std and interpolation.

Inference (:func:`image_transform`) returns normalized float tensors, as OpenCLIP's preprocess does. Training
views (:class:`TrainViews`) stop at uint8 tensors: workers then ship a quarter of the bytes, and
:class:`DeviceNormalize` scales and normalizes whole batches on the accelerator.
"""
from __future__ import annotations

import math

import torch
from torchvision.transforms import v2 as T

from vlp.config import AugmentConfig, ViewsConfig
from vlp.data.masks import MASKS

IMAGE_FIELDS = ("images", "global_crops", "local_crops")


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


def crop_transform(size: int, interpolation: str, augment: AugmentConfig, scale: list[float] | None = None):
    """RGB PIL image -> uint8 tensor [3, size, size]: a random resized crop plus the configured augmentations,
    or, with augmentation off, resize and center crop."""
    interp = _interpolation(interpolation)
    if not augment.enabled:
        return T.Compose([T.Resize(size, interpolation=interp, antialias=True), T.CenterCrop(size), T.PILToTensor()])
    steps = [T.RandomResizedCrop(size, scale=tuple(scale or augment.scale), ratio=tuple(augment.ratio),
                                 interpolation=interp, antialias=True)]
    if augment.hflip:
        steps.append(T.RandomHorizontalFlip(augment.hflip))
    if augment.color_jitter:
        strength = augment.color_jitter
        steps.append(T.ColorJitter(brightness=strength, contrast=strength, saturation=strength,
                                   hue=min(strength / 4, 0.5)))
    if augment.grayscale:
        steps.append(T.RandomGrayscale(augment.grayscale))
    return T.Compose([*steps, T.PILToTensor()])


def smallest_useful_size(size: int, augment: AugmentConfig, scale: list[float]) -> int:
    """The smallest decoded side that still gives a crop of ``size`` pixels without upsampling."""
    if not augment.enabled:
        return size
    return math.ceil(size * math.sqrt(max(augment.ratio)) / math.sqrt(scale[0]))


class TrainViews:
    """A decoded RGB image -> the batch fields: ``images``, and with views configured ``global_crops``,
    ``local_crops``, ``mim_mask`` (True = masked patch, on the ``images`` view's patch grid) and, with both
    global crops and masks, ``global_crop_masks`` [V, h, w] (one mask per global crop, for iBOT)."""

    def __init__(self, visual, augment: AugmentConfig, views: ViewsConfig):
        size, interp = visual.image_size, visual.interpolation
        self.main = crop_transform(size, interp, augment)
        self.global_crop = crop_transform(size, interp, augment, views.global_scale)
        self.local_crop = crop_transform(views.local_size, interp, augment, views.local_scale)
        self.views = views
        self.mask = None
        if views.mask != "none":
            if not getattr(visual, "patch_size", None):
                raise ValueError("data.views.mask needs a ViT image tower (one with a patch size)")
            cell = views.mask_patch_size or visual.patch_size
            if cell % visual.patch_size or size % cell:
                raise ValueError(f"data.views.mask_patch_size={cell} must be a multiple of the patch size "
                                 f"{visual.patch_size} that divides the image size {size}")
            self.mask = MASKS.get(views.mask)(size // cell, views.mask_ratio)
            self.mask_scale = cell // visual.patch_size
        needs = [smallest_useful_size(size, augment, augment.scale)]
        if views.global_crops:
            needs.append(smallest_useful_size(size, augment, views.global_scale))
        if views.local_crops:
            needs.append(smallest_useful_size(views.local_size, augment, views.local_scale))
        self.decode_size = max(needs)  # JPEG draft decoding may shrink images down to this, not below

    def __call__(self, image, generator: torch.Generator) -> dict:
        fields = {"images": self.main(image)}
        if self.views.global_crops:
            fields["global_crops"] = torch.stack([self.global_crop(image) for _ in range(self.views.global_crops)])
        if self.views.local_crops:
            fields["local_crops"] = torch.stack([self.local_crop(image) for _ in range(self.views.local_crops)])
        if self.mask is not None:
            fields["mim_mask"] = self.patch_mask(generator)
            if self.views.global_crops:  # drawn after mim_mask, which stays what it was without them
                fields["global_crop_masks"] = torch.stack([self.patch_mask(generator)
                                                           for _ in range(self.views.global_crops)])
        return fields

    def patch_mask(self, generator: torch.Generator) -> torch.Tensor:
        mask = self.mask(generator)  # on the mask grid; each cell covers mask_scale x mask_scale patches
        return mask.repeat_interleave(self.mask_scale, 0).repeat_interleave(self.mask_scale, 1)


class DeviceNormalize:
    """uint8 image fields of a batch on the device -> float, scaled to [0, 1] and normalized."""

    def __init__(self, mean, std, device: torch.device):
        std = torch.tensor(std, device=device).view(3, 1, 1) * 255
        self.scale, self.shift = 1 / std, -torch.tensor(mean, device=device).view(3, 1, 1) * 255 / std

    def __call__(self, batch: dict) -> dict:
        for name in IMAGE_FIELDS:
            if name in batch and batch[name].dtype == torch.uint8:
                # in place on the one float copy: half the time of (x - mean) / std on a CPU
                batch[name] = batch[name].float().mul_(self.scale).add_(self.shift)
        return batch
