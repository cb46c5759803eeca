"""Load a trained model for use: ``m = vlp.load(run_dir_or_checkpoint)``, then ``m.embed_images`` /
``m.embed_texts``."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from vlp.config import load_config
from vlp.data.transforms import image_transform
from vlp.models import DualEncoder, Tokenizer, build_model
from vlp.train.checkpoint import load_weights, resolve_checkpoint


class LoadedModel:
    """A dual encoder with its tokenizer and preprocessing, in eval mode."""

    def __init__(self, model: DualEncoder, tokenizer: Tokenizer, config, device: torch.device, checkpoint: Path):
        self.model, self.tokenizer, self.config, self.device = model.eval().to(device), tokenizer, config, device
        self.checkpoint = checkpoint
        self.preprocess = image_transform(model.visual)

    def _as_image(self, image) -> Image.Image:
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as opened:
                    return opened.convert("RGB")
            except (OSError, ValueError) as err:
                raise ValueError(f"cannot read image {image}: {err}") from None
        return image

    @torch.no_grad()
    def embed_images(self, images: Sequence, batch_size: int = 64) -> torch.Tensor:
        """PIL images or paths -> L2-normalized float32 embeddings [N, D] on the CPU."""
        out = []
        for start in range(0, len(images), batch_size):
            chunk = [self.preprocess(self._as_image(img)) for img in images[start:start + batch_size]]
            out.append(self.model.encode_image(torch.stack(chunk).to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.config.model.embed_dim)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Strings -> L2-normalized float32 embeddings [N, D] on the CPU."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = [self.model.encode_text(self.tokenizer(texts[i:i + batch_size]).to(self.device)).float().cpu()
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.config.model.embed_dim)


def load(path: str | Path, device: str | torch.device | None = None) -> LoadedModel:
    checkpoint = resolve_checkpoint(path)
    cfg = load_config(checkpoint / "config.yaml")
    model_cfg = dataclasses.replace(cfg.model, image=dataclasses.replace(cfg.model.image, pretrained=None),
                                    text=dataclasses.replace(cfg.model.text, pretrained=False))
    if (checkpoint / "tokenizer").is_dir():
        model_cfg = dataclasses.replace(model_cfg, tokenizer=dataclasses.replace(
            model_cfg.tokenizer, path=str(checkpoint / "tokenizer")))
    model, tokenizer = build_model(model_cfg)
    load_weights(checkpoint, model, prefix="model.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return LoadedModel(model, tokenizer, dataclasses.replace(cfg, model=model_cfg), device, checkpoint)
