"""Probes on frozen features: a linear probe and a k-NN classifier, both reporting top-1 accuracy.

- Linear probe: multinomial logistic regression on L2-normalized features, as in CLIP's linear-probe
  evaluation (Radford et al. 2021, Appendix A.3), whose regularization strength C is chosen on a validation
  split held out from the training features, after which the probe is refit on all of them.
- k-NN: cosine similarity to the training features and temperature-weighted voting among the k nearest,
  each neighbour voting for its label with weight exp(sim / T) (Wu et al. 2018; DINO, Caron et al. 2021,
  ``eval_knn.py``: k=20, T=0.07).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def _normalized(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=-1)


def _fit_logistic(features: torch.Tensor, labels: torch.Tensor, c: float, max_iter: int) -> LogisticRegression:
    # lbfgs fits the multinomial (softmax) loss for more than two classes
    return LogisticRegression(C=c, max_iter=max_iter).fit(features.cpu().numpy(), labels.cpu().numpy())


def _accuracy(model: LogisticRegression, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float(model.score(features.cpu().numpy(), labels.cpu().numpy()))


def select_c(features: torch.Tensor, labels: torch.Tensor, c_grid: tuple[float, ...] = C_GRID,
             val_fraction: float = 0.2, seed: int = 0, max_iter: int = 1000) -> float:
    """The C from ``c_grid`` with the best accuracy on a random validation split of the (normalized) training
    features; the smallest such C on a tie, preferring the stronger regularization."""
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
    num_val = max(1, int(len(features) * val_fraction))
    val, fit = order[:num_val], order[num_val:]
    scores = [_accuracy(_fit_logistic(features[fit], labels[fit], c, max_iter), features[val], labels[val])
              for c in c_grid]
    return c_grid[scores.index(max(scores))]


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, c_grid: tuple[float, ...] = C_GRID, val_fraction: float = 0.2,
                 seed: int = 0, max_iter: int = 1000) -> float:
    """Top-1 test accuracy of a logistic-regression probe on frozen, L2-normalized features, with C chosen by
    :func:`select_c` and the probe then refit on the whole training set."""
    train_features, test_features = _normalized(train_features), _normalized(test_features)
    c = select_c(train_features, train_labels, c_grid, val_fraction, seed, max_iter)
    return _accuracy(_fit_logistic(train_features, train_labels, c, max_iter), test_features, test_labels)


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                k: int = 20, temperature: float = 0.07, chunk_size: int = 1024) -> torch.Tensor:
    """Predicted label of each test feature by DINO's weighted k-NN vote; test features are processed a chunk
    at a time so the test x train similarity never has to fit in memory at once."""
    train_features = _normalized(train_features)
    train_labels = train_labels.to(train_features.device).long()
    num_classes = int(train_labels.max()) + 1
    k = min(k, len(train_features))
    predictions = []
    for start in range(0, len(test_features), chunk_size):
        chunk = _normalized(test_features[start:start + chunk_size].to(train_features.device))
        similarity, neighbours = (chunk @ train_features.T).topk(k, dim=1)
        votes = torch.zeros(len(chunk), num_classes, device=chunk.device)
        votes.scatter_add_(1, train_labels[neighbours], (similarity / temperature).exp())
        predictions.append(votes.argmax(1).cpu())
    return torch.cat(predictions)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 test accuracy of the weighted k-NN classifier of :func:`knn_predict`."""
    predictions = knn_predict(train_features, train_labels, test_features, k, temperature)
    return (predictions == test_labels.cpu()).float().mean().item()
