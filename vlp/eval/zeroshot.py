"""Zero-shot evaluation: class names in prompt templates become classifier weights (CLIP's prompt
ensembling, built by ``vlp.zeroshot``)."""
from __future__ import annotations

import torch

from vlp.zeroshot import build_classifier


@torch.no_grad()
def zero_shot_weights(model, tokenizer, class_names: list[str], templates: list,
                      device: torch.device) -> torch.Tensor:
    """Returns [num_classes, embed_dim]: the normalized mean of the normalized template embeddings."""
    def encode_texts(texts: list[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(texts).to(device)).float()

    return build_classifier(encode_texts, class_names, templates).weights


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(1).float().mean().item()
