"""Self-distillation from an EMA teacher: DINO's multi-crop loss (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers"), as SILC adds it to image-text training (Naeem et al. 2023), and iBOT's
patch-level variant (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer").

Student and teacher each put the tower's pooled token through a projection head to K prototypes (an MLP, an
L2-normalized bottleneck, a weight-normalized last layer). The teacher's outputs are centered (an EMA of their
batch mean, all-reduced over processes) and sharpened with a low temperature warmed up linearly; the loss is the
cross-entropy from each teacher global view to every other student view, global and local.

With ``ibot``, as in iBOT, the student sees the global crops with their ``global_crop_masks`` patches replaced
by a learned mask token, and that one pass gives both its [CLS] outputs for the DINO loss and its patch outputs:
at the masked patches of each crop, these predict the teacher's patch distributions of the same crop unmasked
(with their own center), from the teacher's one pass over the global crops. No other view is run for it.

Terms: ``dino`` and, with ``ibot``, ``ibot``. The center update is stashed in ``forward`` and applied in
``after_optimizer_step`` with the teacher's, so ``forward`` changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError
from vlp.heads import HEADS, Head
from vlp.heads.layers import field, mlp, token_tower, views_first
from vlp.heads.teacher import EmaTeacher, momentum_at


@dataclass
class SelfDistillConfig:
    prototypes: int = 4096  # K (DINO: 65536)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.04  # after warmup (DINO: 0.04 to 0.07)
    warmup_teacher_temp: float = 0.04  # at step 0
    teacher_temp_warmup_steps: int = 0
    center_momentum: float = 0.9
    momentum: float = 0.996  # teacher EMA momentum at step 0, rising on a cosine to final_momentum
    final_momentum: float = 1.0
    ibot: bool = False  # mask the global crops, add iBOT's patch loss (needs data.views.mask)


class PrototypeHead(nn.Module):
    """DINO's head: MLP -> L2-normalized bottleneck -> weight-normalized prototypes (norm fixed at 1)."""

    def __init__(self, width: int, cfg: SelfDistillConfig):
        super().__init__()
        self.mlp = mlp([width, cfg.hidden_dim, cfg.hidden_dim, cfg.bottleneck_dim])
        self.prototypes = nn.Parameter(torch.randn(cfg.prototypes, cfg.bottleneck_dim) * 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(self.mlp(tokens), dim=-1), F.normalize(self.prototypes, dim=-1))


@HEADS.register("self_distill")
class SelfDistillHead(Head):
    Config = SelfDistillConfig

    def __init__(self, cfg: SelfDistillConfig, model: nn.Module):
        super().__init__()
        tower = token_tower(model, "self_distill")
        self.cfg, self.total_steps = cfg, None
        self.projection = PrototypeHead(tower.token_width, cfg)
        self.mask_token = nn.Parameter(torch.zeros(tower.token_width)) if cfg.ibot else None
        self.teacher = EmaTeacher({"tower": tower, "projection": self.projection})
        self.register_buffer("center", torch.zeros(cfg.prototypes))
        self.register_buffer("patch_center", torch.zeros(cfg.prototypes) if cfg.ibot else None)
        self.register_buffer("temperature", torch.tensor(self.teacher_temp(0)))
        self.pending: list[dict[str, torch.Tensor]] = []  # batch centers of this step's passes

    def setup(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def teacher_temp(self, step: int) -> float:
        cfg = self.cfg
        if step >= cfg.teacher_temp_warmup_steps:
            return cfg.teacher_temp
        progress = step / cfg.teacher_temp_warmup_steps
        return cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * progress

    def forward(self, batch: dict, outputs: dict, model: nn.Module) -> dict[str, torch.Tensor]:
        global_crops = field(batch, "global_crops", "self_distill")
        local_crops = batch.get("local_crops")
        views, batch_size = global_crops.shape[1], len(global_crops)
        if views + (0 if local_crops is None else local_crops.shape[1]) < 2:
            raise ConfigError("heads.self_distill needs two views at least: set data.views.global_crops=2 or add "
                              "data.views.local_crops")
        crops = views_first(global_crops)
        masks = views_first(field(batch, "global_crop_masks", "self_distill")) if self.cfg.ibot else None
        teacher = self.teacher_logits(crops)
        student, patch_tokens = self.student_logits(model, crops, masks, local_crops)
        student = student.view(-1, batch_size, self.cfg.prototypes)
        terms = {"dino": self.cross_view_loss(student, teacher["global"].view(views, batch_size, -1))}
        stash = {"center": teacher["global"].mean(0)}
        if self.cfg.ibot:
            terms["ibot"] = self.patch_loss(self.projection(patch_tokens), teacher["patch_tokens"], masks)
            stash["patch_center"] = teacher["patch_tokens"].mean((0, 1))
        self.pending.append(stash)
        return terms

    @torch.no_grad()
    def teacher_logits(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's logits of the unmasked crops: ``global`` [N, K] and, with iBOT, ``patch_tokens``
        [N, L, K], from one pass."""
        tokens = self.teacher["tower"].forward_tokens(crops)
        names = ("global", "patch_tokens") if self.cfg.ibot else ("global",)
        return {name: self.teacher["projection"](tokens[name]) for name in names}

    def student_logits(self, model: nn.Module, crops: torch.Tensor, masks: torch.Tensor | None,
                       local_crops: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The [CLS] logits of the global then the local crops, and the global crops' patch tokens. As in iBOT,
        one pass over the masked global crops gives the student's outputs for both losses."""
        tokens = model.visual.forward_tokens(crops, masks, self.mask_token)
        pooled = [tokens["global"]]
        if local_crops is not None:
            pooled.append(model.visual.forward_tokens(views_first(local_crops))["global"])
        return self.projection(torch.cat(pooled)), tokens["patch_tokens"]

    def targets(self, logits: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        return F.softmax((logits - center) / self.temperature, dim=-1)

    def cross_view_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over every (teacher global view, other student view) pair; [V, B, K] inputs."""
        targets = self.targets(teacher, self.center)
        log_probs = F.log_softmax(student / self.cfg.student_temp, dim=-1)
        total, pairs = 0.0, 0
        for t, target in enumerate(targets):
            for s, log_prob in enumerate(log_probs):
                if s != t:
                    total, pairs = total + (-target * log_prob).sum(-1).mean(), pairs + 1
        return total / pairs

    def patch_loss(self, student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """iBOT: each masked crop's patch logits [N, L, K] against the teacher's of the same crop unmasked, on its
        masked patches; averaged per image, then over images and crops (all crops have the same batch size)."""
        log_probs = F.log_softmax(student / self.cfg.student_temp, dim=-1)
        per_patch = (-self.targets(teacher, self.patch_center) * log_probs).sum(-1)
        masks = masks.flatten(1)
        return ((per_patch * masks).sum(1) / masks.sum(1).clamp(min=1)).mean()

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        if self.total_steps is None:
            raise RuntimeError("SelfDistillHead.setup(total_steps) was not called (build_heads does it)")
        self.teacher.update({"tower": model.visual, "projection": self.projection},
                            momentum_at(step - 1, self.total_steps, self.cfg.momentum, self.cfg.final_momentum))
        for name in self.pending[0] if self.pending else ():
            batch_center = _mean_over_processes(torch.stack([p[name] for p in self.pending]).mean(0))
            getattr(self, name).lerp_(batch_center, 1 - self.cfg.center_momentum)
        self.pending.clear()
        self.temperature.fill_(self.teacher_temp(step))


def _mean_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """DINO all-reduces the teacher's batch center, so every process keeps the same center."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor
