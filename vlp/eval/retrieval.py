"""Image-text retrieval recall where an image may have several correct texts (the COCO / Flickr30k protocol).

``text_of_image[i]`` is the index of image ``i``'s caption among the text gallery; identical captions count as
one text, so an image query hits when its caption is in the top k, and a text query hits when any image
carrying that caption is in the top k.
"""
from __future__ import annotations

import torch


def recall_at_k(image_features: torch.Tensor, text_features: torch.Tensor, text_of_image: torch.Tensor,
                ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    similarity = image_features.float() @ text_features.float().T  # [images, texts]
    metrics = {}
    positives = torch.zeros_like(similarity, dtype=torch.bool)
    positives[torch.arange(len(text_of_image)), text_of_image] = True
    # rank = number of wrong items scored at least as high as the best correct one (ties count against)
    image_rank = ((similarity >= similarity.gather(1, text_of_image[:, None])) & ~positives).sum(1)
    best_positive = similarity.T.masked_fill(~positives.T, float("-inf")).max(1).values
    text_rank = ((similarity.T >= best_positive[:, None]) & ~positives.T).sum(1)
    for k in ks:
        metrics[f"image_to_text_R@{k}"] = (image_rank < k).float().mean().item()
        metrics[f"text_to_image_R@{k}"] = (text_rank < k).float().mean().item()
    return metrics
