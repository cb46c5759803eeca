"""``vlp eval``'s outputs: results.json, a markdown table, and plots (matplotlib's Agg backend: no display)."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def markdown_table(results: dict) -> str:
    """The metrics (then the counts) as a two-column markdown table, headed by task, model and data."""
    lines = [f"**{results['task']}** · model `{results['model']}` · data `{results['data']}`", "",
             "| metric | value |", "|---|---|"]
    for name, value in {**results["metrics"], **results["counts"]}.items():
        lines.append(f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, results: dict) -> str:
    """Writes results.json and results.md to ``out_dir``; returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    (out_dir / "results.md").write_text(table)
    return table


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: must work on machines without a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """A confusion-matrix PNG: rows are true classes, columns predicted, cells the row-normalized rate."""
    plt = _pyplot()
    rates = confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=60, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 20:  # beyond that the counts are unreadable
        for (row, col), count in zip(torch.cartesian_prod(torch.arange(len(ticks)), torch.arange(len(ticks))).tolist(),
                                     confusion.flatten().tolist()):
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                    color="white" if rates[row, col] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_retrievals(queries: list[str], top_images: list[list], hits: list[list[bool]], path: Path) -> Path:
    """A PNG grid: one row per text query with its top retrieved images (PIL, or None for an unreadable one,
    drawn blank), correct ones framed in green."""
    plt = _pyplot()
    rows, cols = len(queries), max(len(row) for row in top_images)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.3 * rows), squeeze=False)
    for row, (query, images, row_hits) in enumerate(zip(queries, top_images, hits)):
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(images):
                ax.axis("off")
                continue
            if images[col] is not None:
                ax.imshow(images[col])
            for spine in ax.spines.values():
                spine.set_edgecolor("green" if row_hits[col] else "red")
                spine.set_linewidth(3)
        axes[row][0].set_title(query if len(query) <= 60 else query[:57] + "...", loc="left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
