"""Image and caption embeddings for the model-based recipe steps (``clip_score``, ``embedding_dedup``,
``decontaminate``, ``cluster_balance``).

``model`` is a vlp run or checkpoint directory (``vlp.load``), or ``local-dir:DIR``, an OpenCLIP model directory
as ``open_clip.create_model_and_transforms('local-dir:DIR')`` loads it (``vlp export --format open_clip`` writes
one). Either way images go through the model's own eval transform and embeddings are L2-normalized, so an exported
vlp model gives the same numbers both ways. The option is checked when the recipe loads (without importing torch);
the model loads on first use, once, in the main process.

Speed: images are decoded and preprocessed by a thread pool with one thread per core (PIL's decoders and resizes
release the GIL), then each tower runs once per batch under ``torch.inference_mode`` with torch's intra-op threads,
so decoding and inference each get every core in turn instead of fighting over them.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from vlp.errors import ConfigError
from vlp.recipes.sample import MAX_PIXELS, Sample
from vlp.recipes.steps import GlobalStep
from vlp.recipes.steps.similarity import cores

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
        self.decoders = ThreadPoolExecutor(cores(), thread_name_prefix="recipe-decode")

    def pixels(self, sample: Sample):
        from vlp.data.decode import decode_image  # vlp.data imports torch: not when the recipe loads

        # the read check has decoded every image once already, so this raises no BadSample
        return self.preprocess(decode_image(sample.image_bytes, MAX_PIXELS, self.draft_size))

    def images(self, samples: list[Sample]) -> np.ndarray:
        """[N, D] float32 embeddings of the samples' images."""
        import torch

        return self.run(self.encode_image, torch.stack(list(self.decoders.map(self.pixels, samples))))

    def pil_images(self, images: list) -> np.ndarray:
        """[N, D] float32 embeddings of PIL images."""
        import torch

        return self.run(self.encode_image, torch.stack(list(self.decoders.map(self.preprocess, images))))

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
    """A global step that embeds with ``config.model`` (a :class:`ModelOptions`)."""

    def __init__(self, name: str, config: ModelOptions):
        super().__init__(name, config)
        check_model_options(config)
        self._encoder: Encoder | None = None

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = load_encoder(self.config)
        return self._encoder


class ImageEmbeddingStep(ModelStep):
    """A global step whose signatures are the samples' L2-normalized image embeddings, [N, D] float32."""

    def signatures(self, samples: list[Sample]) -> np.ndarray:
        return self.encoder.images(samples)
