"""The teacher of the self-distillation and feature-MIM heads: an EMA of student modules, or a frozen tower.

A momentum teacher (MoCo, BYOL; DINO's schedule, Caron et al. 2021) is a deep copy of the student whose weights
follow ``teacher = m * teacher + (1 - m) * student`` after every optimizer step, with ``m`` rising on a cosine
from ``base`` (0.996) to ``final`` (1.0) over the run. The copy is registered under its head with
``requires_grad=False``, which is what keeps it right everywhere else:

- ``build_optimizer`` takes only parameters that require grad, so the optimizer never sees it;
- DDP's reducer ignores parameters without grad, and every rank applies the same update to the same, already
  all-reduced student weights, so the copies stay identical across ranks without any communication;
- it is part of the objective's state dict, so checkpoints carry it and a resumed run continues exactly.

The teacher always runs in eval mode (no dropout), so its targets are deterministic.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from vlp.models.weights import load_into, load_state_dict_file


def momentum_at(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """DINO's cosine momentum schedule: ``base`` at step 0, ``final`` at ``total_steps``."""
    progress = min(step, total_steps) / max(1, total_steps)
    return final - (final - base) * (1 + math.cos(math.pi * progress)) / 2


class EmaTeacher(nn.Module):
    """Frozen copies of named student modules (e.g. the image tower and a projection head)."""

    def __init__(self, students: dict[str, nn.Module]):
        super().__init__()
        self.copies = nn.ModuleDict({name: copy.deepcopy(module).requires_grad_(False).eval()
                                     for name, module in students.items()})

    def __getitem__(self, name: str) -> nn.Module:
        return self.copies[name]

    def train(self, mode: bool = True) -> EmaTeacher:
        return super().train(False)

    @torch.no_grad()
    def update(self, students: dict[str, nn.Module], momentum: float) -> None:
        """``teacher = m * teacher + (1 - m) * student`` for every parameter; buffers (norm statistics) copied."""
        for name, student in students.items():
            teacher = self.copies[name]
            torch._foreach_lerp_(list(teacher.parameters()), [p.detach() for p in student.parameters()],
                                 1.0 - momentum)
            for mine, theirs in zip(teacher.buffers(), student.buffers()):
                mine.copy_(theirs)


def load_frozen_tower(tower: nn.Module, path: str | Path) -> nn.Module:
    """A frozen copy of ``tower`` with the weights of ``path``: a vlp checkpoint directory, its
    ``model.safetensors``, an OpenCLIP checkpoint or a file of the tower's own state dict. Tensors outside the
    image tower (the text tower's, the heads') are ignored; a missing, extra or misshapen one of the tower is a
    one-line ConfigError naming the file."""
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    frozen = copy.deepcopy(tower).requires_grad_(False).eval()
    load_into(frozen, _tower_state(load_state_dict_file(file)), file)
    return frozen


def _tower_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower's tensors, keyed as the tower's own state dict (``visual.*``): a vlp checkpoint holds them
    under ``model.visual.``, an OpenCLIP checkpoint as they are, a bare OpenCLIP ``VisionTransformer`` without
    the ``visual.`` prefix. Selected by prefix, not by the tower's keys, so a deeper tower does not load cut."""
    if any(k.startswith("model.visual.") for k in state):
        return {k.removeprefix("model.visual."): v for k, v in state.items() if k.startswith("model.visual.")}
    if any(k.startswith("visual.") for k in state):
        return {k: v for k, v in state.items() if k.startswith("visual.")}
    return {f"visual.{k}": v for k, v in state.items()}
