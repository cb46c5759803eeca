"""Evaluation on a held-out split: zero-shot top-1 (when the data has class names) and retrieval recall."""
from __future__ import annotations

import torch

from vlp.data import CaptionedImages
from vlp.eval.retrieval import recall_at_k
from vlp.eval.zeroshot import top_k_accuracy, zero_shot_weights


@torch.no_grad()
def embed_images(model, images: list, transform, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([transform(img) for img in images[start:start + batch_size]]).to(device)
        chunks.append(model.encode_image(batch).float())
    return torch.cat(chunks)


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], device: torch.device, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model.encode_text(tokenizer(texts[i:i + batch_size]).to(device)).float()
                      for i in range(0, len(texts), batch_size)])


@torch.no_grad()
def evaluate(model, tokenizer, data: CaptionedImages, transform, device: torch.device,
             batch_size: int = 256) -> dict[str, float]:
    was_training = model.training
    model.eval()
    image_features = embed_images(model, [data.pil(i) for i in range(len(data))], transform, device, batch_size)
    unique = sorted(set(data.captions))
    text_index = {text: i for i, text in enumerate(unique)}
    text_features = embed_texts(model, tokenizer, unique, device, batch_size)
    text_of_image = torch.tensor([text_index[c] for c in data.captions], device=device)
    metrics = recall_at_k(image_features, text_features, text_of_image)
    if data.class_names:
        weights = zero_shot_weights(model, tokenizer, data.class_names, data.templates or ["{}"], device)
        labels = torch.as_tensor(data.labels, device=device)
        metrics["zeroshot_top1"] = top_k_accuracy(image_features @ weights.T, labels, 1)
    model.train(was_training)
    return metrics
