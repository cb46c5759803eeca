"""Image and caption embeddings for the model-based recipe steps (``clip_score``, ``embedding_dedup``,
``decontaminate``, ``cluster_balance``).

``model`` is a vlp run or checkpoint directory (``vlp.load``), or ``local-dir:DIR``, an OpenCLIP model directory
as ``open_clip.create_model_and_transforms('local-dir:DIR')`` loads it (``vlp export --format open_clip`` writes
one). Either way images go through the model's own eval transform and embeddings are L2-normalized, so an exported
vlp model gives the same numbers both ways. The option is checked when the recipe loads (without importing torch);
the model loads on first use, once, in the main process.

Speed: a step's ``prepare`` decodes the image (a JPEG draft, sharing the read check's decode) and runs the PIL part
of the model's preprocess (resize, crop) in the engine's worker processes, which send back uint8 pixels; the main
process stacks a batch, converts and normalizes it as one tensor (:class:`SplitPreprocess`, checked at load to give
the model's own preprocess's numbers) and runs the tower under ``torch.inference_mode``, while the workers prepare
the next chunk.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample
from vlp.recipes.steps import GlobalStep, core_threads

LOCAL_DIR = "local-dir:"  # open_clip's own prefix for a model directory
OPEN_CLIP_CONFIG = "open_clip_config.json"


@dataclass
class ModelOptions:
    """The options every model-based step has."""

    model: str | None = None  # a vlp run/checkpoint directory, or local-dir:DIR (an OpenCLIP model directory)
    batch_size: int = 256  # samples per model batch
    device: str | None = None  # None: cuda when available, else cpu
    # a large JPEG decodes at 1/2, 1/4 or 1/8 scale while its short side stays at least the model's input size
    # (PIL draft), as vlp's training and eval decode; false decodes every pixel, as OpenCLIP does
    fast_decode: bool = True


def check_model_options(options: ModelOptions) -> None:
    """Fail when the recipe loads, naming the key, rather than after the steps before have run."""
    if not options.model:
        raise ConfigError("config key 'model' is not set: give a vlp run or checkpoint directory, or "
                          "local-dir:DIR for an OpenCLIP model directory")
    if options.model.startswith(LOCAL_DIR):
        directory = Path(options.model[len(LOCAL_DIR):])
        if not (directory / OPEN_CLIP_CONFIG).is_file():
            raise ConfigError(f"config key 'model': {directory} is not an OpenCLIP model directory (no "
                              f"{OPEN_CLIP_CONFIG})")
    elif not Path(options.model).exists():
        raise ConfigError(f"config key 'model': no such run or checkpoint: {options.model}")
    if options.batch_size < 1:
        raise ConfigError(f"config key 'batch_size' must be at least 1, got {options.batch_size}")


class SplitPreprocess:
    """A preprocess (PIL image -> [3, S, S] float tensor) cut where the image becomes a tensor: ``per_image`` (the
    PIL transforms before it, then the pixels as a uint8 [H, W, C] array, cheap to send between processes) and
    ``batched`` (the list of arrays -> the [N, 3, S, S] batch: the conversion and every transform after it on the
    whole batch; the usual scale-to-[0, 1]-then-Normalize as one multiply and one add).
    Checked against the whole preprocess on test images; a preprocess that cannot be cut (not a torchvision
    Compose, no PIL-to-tensor transform, a later transform that does not take a batch, or numbers that differ) runs
    whole per image, and ``batched`` stacks."""

    def __init__(self, preprocess: Callable):
        self.preprocess = preprocess
        self.pil, self.tensor, self.scale, self.affine = None, [], False, None
        cut = self.cut_point(getattr(preprocess, "transforms", None))
        if cut is not None:
            transforms = preprocess.transforms
            self.pil, self.tensor = transforms[:cut], transforms[cut + 1:]
            self.scale = self.scales(transforms[cut])
            self.affine = self.normalize_affine()
            if not self.agrees():
                self.pil, self.tensor, self.scale, self.affine = None, [], False, None

    @staticmethod
    def cut_point(transforms) -> int | None:
        from torchvision import transforms as v1
        from torchvision.transforms import v2

        if not isinstance(transforms, (list, tuple)):
            return None
        to_tensor = (v1.ToTensor, v1.PILToTensor, v2.PILToTensor, v2.ToImage)
        return next((index for index, transform in enumerate(transforms) if isinstance(transform, to_tensor)), None)

    @staticmethod
    def scales(transform) -> bool:
        """Whether the PIL-to-tensor transform also scales to [0, 1] (v1 ToTensor and its subclasses, such as
        OpenCLIP's MaybeToTensor)."""
        from torchvision import transforms as v1

        return isinstance(transform, v1.ToTensor)

    def normalize_affine(self):
        """(scale, shift), each [3, 1, 1], when the tensor part is scaling to [0, 1] then Normalize: the two as
        ``pixels * scale + shift``."""
        import torch
        from torchvision import transforms as v1
        from torchvision.transforms import v2

        rest, scaled = list(self.tensor), self.scale
        if (not scaled and rest and isinstance(rest[0], v2.ToDtype) and rest[0].dtype == torch.float32
                and rest[0].scale):
            rest, scaled = rest[1:], True
        if not (scaled and len(rest) == 1 and isinstance(rest[0], (v1.Normalize, v2.Normalize))):
            return None
        mean, std = (torch.as_tensor(value, dtype=torch.float32).view(-1, 1, 1)
                     for value in (rest[0].mean, rest[0].std))
        return 1 / (255 * std), -mean / std

    def agrees(self) -> bool:
        from PIL import Image

        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (size, size + 37, 3), dtype=np.uint8)) for size in (61, 300)]
        try:
            batched = self.batched([self.per_image(image) for image in images])
        except (TypeError, ValueError, RuntimeError):
            return False
        whole = np.stack([np.asarray(self.preprocess(image)) for image in images])
        return batched.shape == whole.shape and np.allclose(batched.numpy(), whole, atol=1e-5)

    def per_image(self, image) -> np.ndarray:
        if self.pil is None:
            return np.asarray(self.preprocess(image))
        for transform in self.pil:
            image = transform(image)
        pixels = np.array(image)  # a copy: torch wants writable arrays
        return pixels[:, :, None] if pixels.ndim == 2 else pixels

    def batched(self, arrays: list[np.ndarray]):
        import torch

        if self.pil is None:
            return torch.from_numpy(np.stack(arrays)).contiguous()
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        if self.affine is not None:  # a few ops over the whole batch: each op is a sync point of torch's threads
            scale, shift = self.affine
            return torch.empty(pixels.shape).copy_(pixels).mul_(scale).add_(shift)
        batch = pixels.contiguous()
        if self.scale:
            batch = batch.float().div(255)
        for transform in self.tensor:
            batch = transform(batch)
        return batch


@dataclass
class Encoder:
    """A loaded dual encoder: ``preprocess`` (PIL image -> [3, S, S]) and the two towers, each returning
    L2-normalized embeddings. ``draft_size``: decode JPEGs down to this size (None: every pixel)."""

    preprocess: Callable
    encode_image: Callable
    encode_text: Callable  # list of strings -> embeddings
    device: object  # torch.device
    draft_size: int | None = None

    def __post_init__(self):
        self.split = SplitPreprocess(self.preprocess)

    def prepare(self, sample: Sample) -> np.ndarray:
        """What a worker makes of a sample for ``images``: its image decoded and through ``split.per_image``."""
        return self.split.per_image(sample.decoded(self.draft_size))

    def images(self, samples: list[Sample], prepared: str | None = None) -> np.ndarray:
        """[N, D] float32 embeddings of the samples' images, from ``sample.inputs[prepared]`` where the engine
        prepared them, else prepared here on a thread per core."""
        arrays = [sample.inputs.get(prepared) if prepared else None for sample in samples]
        missing = [index for index, array in enumerate(arrays) if array is None]
        for index, array in zip(missing, core_threads().map(self.prepare, [samples[i] for i in missing])):
            arrays[index] = array
        return self.run(self.encode_image, self.split.batched(arrays))

    def pil_images(self, images: list) -> np.ndarray:
        """[N, D] float32 embeddings of PIL images."""
        return self.run(self.encode_image, self.split.batched(list(core_threads().map(self.split.per_image, images))))

    def texts(self, texts: list[str]) -> np.ndarray:
        """[N, D] float32 embeddings of captions."""
        return self.run(self.encode_text, texts)

    def run(self, tower: Callable, inputs) -> np.ndarray:
        import torch

        with torch.inference_mode():
            inputs = inputs.to(self.device) if isinstance(inputs, torch.Tensor) else inputs
            return tower(inputs).float().cpu().numpy()


def input_size(visual) -> int:
    """An image tower's input side (OpenCLIP's may be a (height, width) pair)."""
    size = visual.image_size
    return max(size) if isinstance(size, (tuple, list)) else size


def load_encoder(options: ModelOptions) -> Encoder:
    import torch

    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if options.model.startswith(LOCAL_DIR):
        import open_clip

        network, _, preprocess = open_clip.create_model_and_transforms(options.model, device=device)
        network.eval()
        tokenizer = open_clip.get_tokenizer(options.model)
        return Encoder(preprocess, lambda pixels: network.encode_image(pixels, normalize=True),
                       lambda texts: network.encode_text(tokenizer(texts).to(device), normalize=True), device,
                       input_size(network.visual) if options.fast_decode else None)
    import vlp

    loaded = vlp.load(options.model, device)
    return Encoder(loaded.preprocess, loaded.model.encode_image,
                   lambda texts: loaded.model.encode_text(loaded.tokenizer(texts).to(device)), device,
                   input_size(loaded.model.visual) if options.fast_decode else None)


class ModelStep(GlobalStep):
    """A global step that embeds with ``config.model`` (a :class:`ModelOptions`); the workers prepare its images."""

    prepares = True

    def __init__(self, name: str, config: ModelOptions):
        super().__init__(name, config)
        check_model_options(config)
        self._encoder: Encoder | None = None

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = load_encoder(self.config)
        return self._encoder

    def load(self) -> None:
        self.encoder  # noqa: B018 (the property loads the model)

    @property
    def decode_size(self) -> int | None:
        return self.encoder.draft_size

    def prepare(self, sample: Sample) -> np.ndarray:
        return self.encoder.prepare(sample)

    def images(self, samples: list[Sample]) -> np.ndarray:
        """[N, D] float32 embeddings of the samples' images."""
        return self.encoder.images(samples, self.name)


class ImageEmbeddingStep(ModelStep):
    """A global step whose signatures are the samples' L2-normalized image embeddings, [N, D] float32."""

    def signatures(self, samples: list[Sample]) -> np.ndarray:
        return self.images(samples)
