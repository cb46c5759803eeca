"""Image-text retrieval: Recall@k, mean and median rank, for galleries where an item may have several correct
matches.

Two protocols share one ranking core:

- ``recall_at_k(image_features, text_features, text_of_image)`` (the training loop's evaluation):
  ``text_of_image[i]`` is the index of image ``i``'s caption among the texts; identical captions count as one
  text, so an image query has one correct text and a text query hits when any image carrying it is in the top k.
- ``retrieval_metrics(image_features, text_features, image_of_text)``: the COCO / Flickr30k 5-captions protocol
  (Karpathy & Fei-Fei 2015; CLIP, Radford et al. 2021, Table 13). ``image_of_text[t]`` is the index of text
  ``t``'s image; a text query has exactly one correct image, and an image query hits when ANY of its captions
  ranks within k.

A query's rank is 1-based: 1 + the number of wrong gallery items scored at least as high as its best correct
item, so ties count against the query. Similarities are computed a chunk of queries at a time, so a
25k x 125k similarity matrix never has to fit in memory at once.
"""
from __future__ import annotations

import torch

DEFAULT_CHUNK = 1024


def query_ranks(queries: torch.Tensor, gallery: torch.Tensor, query_labels: torch.Tensor,
                gallery_labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """1-based rank of each query's best correct gallery item; gallery item g is correct for query q when
    ``query_labels[q] == gallery_labels[g]``. A query without any correct item gets rank ``len(gallery) + 1``.

    Returns a CPU int64 tensor of shape [queries]."""
    gallery = gallery.float()
    gallery_labels = gallery_labels.to(gallery.device)
    ranks = []
    for start in range(0, len(queries), chunk_size):
        chunk = queries[start:start + chunk_size].to(gallery.device).float()
        labels = query_labels[start:start + chunk_size].to(gallery.device)
        similarity = chunk @ gallery.T  # [chunk, gallery]
        positive = labels[:, None] == gallery_labels[None, :]
        best_positive = similarity.masked_fill(~positive, float("-inf")).amax(1, keepdim=True)
        # >= rather than >: a wrong item tied with the best correct one ranks ahead of it (pessimistic ties)
        wrong_ahead = ((similarity >= best_positive) & ~positive).sum(1)
        ranks.append((wrong_ahead + 1).cpu())
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def recall_from_ranks(ranks: torch.Tensor, k: int) -> float:
    """Fraction of queries whose best correct item is within the top k."""
    return (ranks <= k).float().mean().item()


def median_rank(ranks: torch.Tensor) -> float:
    """Median of the 1-based ranks, rounded down as OpenCLIP's ``get_clip_metrics`` does
    (``floor(median(0-based)) + 1``), so an even count averages the two middle ranks before flooring."""
    return ranks.double().quantile(0.5).floor().item()


def rank_metrics(ranks: torch.Tensor, prefix: str, ks: tuple[int, ...]) -> dict[str, float]:
    """``{prefix}_R@k`` for each k plus ``{prefix}_mean_rank`` and ``{prefix}_median_rank`` (OpenCLIP's names)."""
    metrics = {f"{prefix}_R@{k}": recall_from_ranks(ranks, k) for k in ks}
    metrics[f"{prefix}_mean_rank"] = ranks.double().mean().item()
    metrics[f"{prefix}_median_rank"] = median_rank(ranks)
    return metrics


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, image_of_text: torch.Tensor,
                      ks: tuple[int, ...] = (1, 5, 10), chunk_size: int = DEFAULT_CHUNK) -> dict[str, float]:
    """Image->text and text->image Recall@k, mean and median rank under the multi-caption protocol:
    ``image_of_text[t]`` is the index of the image that text ``t`` describes (5 texts per image on COCO and
    Flickr30k). Features are compared by dot product, so pass L2-normalized features for cosine similarity."""
    image_of_text = torch.as_tensor(image_of_text)
    image_ids = torch.arange(len(image_features), device=image_of_text.device)
    image_ranks = query_ranks(image_features, text_features, image_ids, image_of_text, chunk_size)
    text_ranks = query_ranks(text_features, image_features, image_of_text, image_ids, chunk_size)
    return {**rank_metrics(image_ranks, "image_to_text", ks), **rank_metrics(text_ranks, "text_to_image", ks)}


def recall_at_k(image_features: torch.Tensor, text_features: torch.Tensor, text_of_image: torch.Tensor,
                ks: tuple[int, ...] = (1, 5, 10), chunk_size: int = DEFAULT_CHUNK) -> dict[str, float]:
    """Recall@k where ``text_of_image[i]`` is the index of image ``i``'s (deduplicated) caption: an image query
    has one correct text, a text query is correct on every image carrying it. Returns only the R@k keys."""
    text_of_image = torch.as_tensor(text_of_image)
    text_ids = torch.arange(len(text_features), device=text_of_image.device)
    image_ranks = query_ranks(image_features, text_features, text_of_image, text_ids, chunk_size)
    text_ranks = query_ranks(text_features, image_features, text_ids, text_of_image, chunk_size)
    metrics = {}
    for k in ks:
        metrics[f"image_to_text_R@{k}"] = recall_from_ranks(image_ranks, k)
        metrics[f"text_to_image_R@{k}"] = recall_from_ranks(text_ranks, k)
    return metrics
