"""What the endpoints do, on a loaded model: each method takes checked inputs and returns plain results.

Images are decoded and preprocessed on Starlette's thread pool, next to the model's work rather than in its
queue; every forward pass goes through the :class:`MicroBatcher`'s one model thread.
"""
from __future__ import annotations

import asyncio
import dataclasses
from functools import partial

import torch
from starlette.concurrency import run_in_threadpool

from vlp.serve.batcher import MicroBatcher
from vlp.serve.images import load_pixels
from vlp.serve.limits import Limits, RequestError, check_labels, check_length, check_texts
from vlp.zeroshot import TEMPLATE_SETS


class ModelService:
    """A ``vlp.api.LoadedModel`` (and optionally a ``vlp.search.ImageIndex``) served within ``limits``."""

    def __init__(self, model, limits: Limits, index=None, max_batch: int = 32, max_wait_ms: float = 5.0):
        self.model, self.limits, self.index = model, limits, index
        runners = {"image": partial(model.embed_images, batch_size=max_batch),
                   "text": partial(model.embed_texts, batch_size=max_batch)}
        self.batcher = MicroBatcher(runners, max_batch, max_wait_ms)
        self.scale = model.model.scale().item()  # the logit scale, fixed in eval mode

    async def embed_image(self, data: bytes) -> torch.Tensor:
        """Image file bytes -> its L2-normalized embedding [D]."""
        return await asyncio.wrap_future(self.batcher.submit("image", await self._pixels(data)))

    async def _pixels(self, data: bytes) -> torch.Tensor:
        size = self.model.model.visual.image_size
        return await run_in_threadpool(load_pixels, data, self.limits, self.model.preprocess, size)

    async def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts -> L2-normalized embeddings [N, D]; each text is one item of the server's batches."""
        check_texts(texts, self.limits)
        futures = [asyncio.wrap_future(self.batcher.submit("text", text)) for text in texts]
        return torch.stack(await asyncio.gather(*futures))

    async def classify(self, data: bytes, labels: str | list[str], templates: str,
                       top_k: int) -> list[tuple[str, float]]:
        """Zero-shot top-k, as ``LoadedModel.classify`` computes it; the label embeddings come from the model's
        classifier cache, so a label set seen before costs no text forward."""
        labels = check_labels(labels, self.limits)
        pixels = await self._pixels(data)  # first: a bad image is refused before any model work
        features, classifier = await asyncio.gather(
            asyncio.wrap_future(self.batcher.submit("image", pixels)),
            asyncio.wrap_future(self.batcher.call(self.model.zero_shot_classifier, labels, templates)))
        probs = classifier.logits(features[None], self.scale).softmax(dim=-1)[0]
        top = probs.topk(min(top_k, len(classifier.labels)))
        return [(classifier.labels[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())]

    async def search(self, text: str | None, data: bytes | None, top_k: int) -> list[tuple[str, float]]:
        """The index's ``top_k`` (path, cosine similarity) for a text or an image query."""
        if self.index is None:
            raise RequestError(404, "this server has no image index; start it with vlp serve --index DIR")
        if (text is None) == (data is None):
            raise RequestError(422, "give exactly one query: text or image")
        if text is not None:
            features = (await self.embed_texts([check_length(text, self.limits, "text")]))[0]
        else:
            features = await self.embed_image(data)
        return (await run_in_threadpool(self.index.search, features[None], top_k))[0]

    def info(self) -> dict:
        tokenizer, batcher = self.model.tokenizer, self.batcher
        index = None if self.index is None else {"images": len(self.index.paths), "kind": self.index.kind}
        return {"checkpoint": str(self.model.checkpoint), "embed_dim": self.model.config.model.embed_dim,
                "image_size": self.model.model.visual.image_size, "tokenizer": tokenizer.kind,
                "context_length": tokenizer.context_length, "template_sets": list(TEMPLATE_SETS),
                "limits": dataclasses.asdict(self.limits), "max_batch": batcher.max_batch,
                "max_wait_ms": batcher.max_wait * 1000, "index": index}

    def health(self) -> dict:
        return {"status": "ok", "batching": dataclasses.asdict(self.batcher.stats)}

    def close(self) -> None:
        self.batcher.close()
