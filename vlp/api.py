"""Load a trained model for use: ``m = vlp.load(run_dir_or_checkpoint)``, then ``m.embed_images`` /
``m.embed_texts`` / ``m.classify`` / ``m.search``."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from vlp.config import load_config
from vlp.data.transforms import image_transform
from vlp.models import DualEncoder, Tokenizer, build_model
from vlp.train.checkpoint import load_weights, resolve_checkpoint
from vlp.search import open_gallery
from vlp.zeroshot import ClassifierCache


class LoadedModel:
    """A dual encoder with its tokenizer and preprocessing, in eval mode."""

    def __init__(self, model: DualEncoder, tokenizer: Tokenizer, config, device: torch.device, checkpoint: Path):
        self.model, self.tokenizer, self.config, self.device = model.eval().to(device), tokenizer, config, device
        self.checkpoint = checkpoint
        self.preprocess = image_transform(model.visual)
        self.classifiers = ClassifierCache()  # label embeddings, reused across classify calls

    def _as_image(self, image) -> Image.Image:
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as opened:
                    return opened.convert("RGB")
            except (OSError, ValueError) as err:
                raise ValueError(f"cannot read image {image}: {err}") from None
        return image

    def _pixels(self, image) -> torch.Tensor:
        """One image (PIL, path, or an already preprocessed [3, H, W] tensor) -> [3, H, W]."""
        return image if isinstance(image, torch.Tensor) else self.preprocess(self._as_image(image))

    @staticmethod
    def _image_list(images) -> list:
        """A single image, a tensor batch [N, 3, H, W], or a list of any of them -> a flat list of images."""
        if isinstance(images, torch.Tensor):
            return list(images) if images.ndim == 4 else [images]
        if isinstance(images, (str, Path, Image.Image)):
            return [images]
        return [item for entry in images for item in LoadedModel._image_list(entry)]

    @torch.no_grad()
    def embed_images(self, images, batch_size: int = 64) -> torch.Tensor:
        """PIL images, paths or preprocessed tensors (one, a [N, 3, H, W] batch, or a list of any of them) ->
        L2-normalized float32 embeddings [N, D] on the CPU."""
        images = self._image_list(images)
        out = []
        for start in range(0, len(images), batch_size):
            chunk = torch.stack([self._pixels(img) for img in images[start:start + batch_size]])
            out.append(self.model.encode_image(chunk.to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.config.model.embed_dim)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Strings -> L2-normalized float32 embeddings [N, D] on the CPU."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = [self.model.encode_text(self.tokenizer(texts[i:i + batch_size]).to(self.device)).float().cpu()
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.config.model.embed_dim)

    def zero_shot_classifier(self, labels: Sequence[str], templates=None):
        """The cached prompt-ensembled ``vlp.zeroshot.ZeroShotClassifier`` for ``labels`` × ``templates``."""
        labels = [label.strip() for label in labels.split(",")] if isinstance(labels, str) else list(labels)
        return self.classifiers.get(self.embed_texts, labels, templates)

    @torch.no_grad()
    def classify(self, images, labels: Sequence[str], templates=None, top_k: int = 5, batch_size: int = 64,
                 autoclip: bool = False) -> list[list[tuple[str, float]]]:
        """Zero-shot classification (CLIP prompt ensembling, optionally AutoCLIP template weighting).

        ``images``: as for ``embed_images``. ``labels``: class names, or one comma-separated string.
        ``templates``: a set name ('openai_imagenet', the default, or 'simple'), or strings with ``{}`` /
        callables. Returns per image its ``top_k`` (label, probability) pairs, most probable first, where the
        probabilities are softmax(logit scale × cosine similarity) over all labels. A SigLIP bias is left
        out: adding it to every logit leaves the softmax unchanged.
        """
        classifier = self.zero_shot_classifier(labels, templates)
        features = self.embed_images(images, batch_size)
        logits = classifier.logits(features, self.model.scale().item(), autoclip=autoclip)
        top = logits.softmax(dim=-1).topk(min(top_k, len(classifier.labels)), dim=-1)
        return [[(classifier.labels[i], p) for p, i in zip(probs.tolist(), idx.tolist())]
                for probs, idx in zip(top.values, top.indices)]

    def search(self, query, gallery, top_k: int = 5) -> list[tuple[str, float]]:
        """Search an image gallery: a ``str`` query is text (text→image); a ``Path``, PIL image or preprocessed
        tensor is an image (image→image). ``gallery``: a ``vlp.search.ImageIndex``, an index directory, or a
        folder of images (indexed now; build one with ``vlp.search.build_index`` to reuse it). Returns the
        ``top_k`` (image path, cosine similarity) pairs, best first."""
        index = open_gallery(gallery, self)
        features = self.embed_texts([query]) if isinstance(query, str) else self.embed_images(query)
        return index.search(features[:1], top_k)[0]


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
