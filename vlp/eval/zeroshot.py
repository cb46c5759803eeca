"""Zero-shot classification: class names in prompt templates become classifier weights (CLIP's prompt
ensembling: the normalized mean of the normalized template embeddings)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def zero_shot_weights(model, tokenizer, class_names: list[str], templates: list[str],
                      device: torch.device) -> torch.Tensor:
    """Returns [num_classes, embed_dim]."""
    weights = []
    for name in class_names:
        tokens = tokenizer([template.format(name) for template in templates]).to(device)
        weights.append(F.normalize(model.encode_text(tokens).float().mean(0), dim=-1))
    return torch.stack(weights)


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(1).float().mean().item()
