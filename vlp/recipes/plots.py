"""The report's PNGs: score histograms with the thresholds marked, before/after distributions, example grids.
Drawn on ``matplotlib.figure.Figure`` (the Agg canvas, no display and no pyplot state) and written atomically."""
from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from vlp.utils import atomic_write_bytes

BINS = 30


def save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})  # no version: the same bytes anywhere
    atomic_write_bytes(path, buffer.getvalue())


def score_histograms(scores: dict[str, np.ndarray], thresholds: dict[str, list[float]], title: str,
                     path: Path) -> None:
    """One histogram per score of a step, each threshold a dashed red line."""
    fig = Figure(figsize=(4 * len(scores), 3))
    for i, (name, values) in enumerate(scores.items()):
        ax = fig.add_subplot(1, len(scores), i + 1)
        ax.hist(values, bins=BINS, color="tab:blue")
        for threshold in thresholds.get(name, []):
            ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
        if thresholds.get(name):
            ax.legend(fontsize=8)
        ax.set_xlabel(name)
        ax.set_ylabel("samples")
    fig.suptitle(title)
    save(fig, path)


def before_after(before: np.ndarray, after: np.ndarray, label: str, path: Path) -> None:
    """Two histograms on shared bins: every readable input sample, and the kept ones."""
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    both = np.concatenate([before, after]) if len(before) + len(after) else np.zeros(1)
    bins = np.histogram_bin_edges(both, bins=BINS)
    ax.hist(before, bins=bins, alpha=0.5, label=f"before ({len(before)})", color="tab:gray")
    ax.hist(after, bins=bins, alpha=0.7, label=f"after ({len(after)})", color="tab:green")
    ax.set_xlabel(label)
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    save(fig, path)


def example_grid(examples: list[tuple[object, str]], title: str, path: Path) -> None:
    """Images (PIL, or None for one that cannot be shown) with their titles, six to a row."""
    columns = min(6, max(len(examples), 1))
    rows = max(math.ceil(len(examples) / columns), 1)
    fig = Figure(figsize=(2.2 * columns, 3.0 * rows))
    for i, (image, caption) in enumerate(examples):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        if image is not None:
            ax.imshow(image)
        else:
            ax.text(0.5, 0.5, "no image", ha="center", va="center", transform=ax.transAxes)
        lines = [line for part in caption.splitlines() for line in textwrap.wrap(part, 28)]
        ax.set_title("\n".join(lines[:4]), fontsize=7)
    fig.suptitle(title if examples else f"{title}: none")
    save(fig, path)
