"""Run metrics: ``metrics.jsonl`` (one JSON object per logged step or evaluation) and the loss-curve PNG."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from vlp.utils import atomic_write_bytes, atomic_write_text


class TermWindow:
    """Loss terms of the steps since the last flush, kept on device so that steps never wait on the host."""

    def __init__(self):
        self.steps: list[int] = []
        self.terms: list[dict[str, torch.Tensor]] = []

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        self.steps.append(step)
        self.terms.append(terms)

    def flush(self, reduce=lambda t: t) -> dict[str, float]:
        """Mean of each term over the window (and over processes, through ``reduce``); one host sync.

        Raises FloatingPointError naming the first step and term that were not finite."""
        names = sorted(self.terms[0], key=lambda name: name == "loss")  # blame a term before the total
        values = reduce(torch.stack([torch.stack([t[n].float() for n in names]) for t in self.terms])).cpu()
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            row, col = bad[0].tolist()
            raise FloatingPointError(f"non-finite loss at step {self.steps[row]}: term '{names[col]}' = "
                                     f"{values[row, col].item()}")
        self.steps, self.terms = [], []
        return {name: values[:, i].mean().item() for i, name in enumerate(names)}


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class MetricsLog:
    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        if path.exists():  # drop what a killed run logged after its last checkpoint
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def plot_loss_curve(metrics_path: Path, output: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_records(metrics_path)
    train = [r for r in records if "loss" in r and math.isfinite(r["loss"])]
    evals = [r for r in records if "eval/zeroshot_top1" in r or "eval/text_to_image_R@1" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if evals:
        other = ax.twinx()
        for key in ("eval/zeroshot_top1", "eval/text_to_image_R@1", "eval/image_to_text_R@1"):
            points = [(r["step"], r[key]) for r in evals if key in r]
            if points:
                other.plot(*zip(*points), marker="o", linestyle="--", label=key.removeprefix("eval/"))
        other.set_ylabel("held-out metric")
        other.set_ylim(0, 1)
        other.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title(metrics_path.parent.name)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(output, buffer.getvalue())


def summary(run_dir: Path, checkpoint: Path | None) -> str:
    """What a person wants after a run: the last held-out figures and where the artifacts are."""
    evals = [r for r in read_records(Path(run_dir) / "metrics.jsonl") if any(k.startswith("eval/") for k in r)]
    lines = []
    if evals:
        last = evals[-1]
        lines.append(f"held-out evaluation at step {last['step']}:")
        if "eval/zeroshot_top1" in last:
            lines.append(f"  zero-shot top-1       {last['eval/zeroshot_top1']:.3f}")
        for direction, label in (("image_to_text", "image->text"), ("text_to_image", "text->image")):
            lines.append(f"  {label} R@1 / R@5  {last[f'eval/{direction}_R@1']:.3f} / {last[f'eval/{direction}_R@5']:.3f}")
    lines.append(f"run directory: {run_dir} (config.yaml, metrics.jsonl, loss_curve.png)")
    if checkpoint is not None:
        lines.append(f"checkpoint: {checkpoint}")
    return "\n".join(lines)
