"""Masked image modeling with feature targets: predict a teacher's features of the masked patches (EVA, Fang et
al. 2023; MaskCLIP, Dong et al. 2023; iBOT's and data2vec's EMA teachers).

The student tower sees the main view with the ``mim_mask`` patches replaced by a learned mask token; a predictor
(a linear layer, or an MLP) maps its patch tokens to the teacher's patch tokens of the unmasked view. The teacher
is an EMA of the image tower (``teacher: ema``), or a frozen tower of the same architecture loaded from a local
file (``teacher: /path``: a vlp checkpoint, an OpenCLIP checkpoint or the tower's state dict), e.g. a trained
CLIP as EVA uses. Loss on the masked patches only: ``1 - cosine`` (EVA) or smooth-L1. Term: ``mim_feature``.
With ``shared_pass: true`` the masked student pass is also the image-text loss's image pass (MaskCLIP's
masked student, without a second pass), so the head costs one teacher pass and the predictor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError
from vlp.heads import HEADS, Head
from vlp.heads.layers import check_choice, field, mlp, token_tower
from vlp.heads.teacher import EmaTeacher, load_frozen_tower, momentum_at

LOSSES = ("cosine", "smooth_l1")


@dataclass
class MimFeatureConfig:
    teacher: str = "ema"  # ema, or a local weights file / vlp checkpoint directory for a frozen teacher
    momentum: float = 0.996  # EMA teacher: momentum at step 0, rising on a cosine to final_momentum
    final_momentum: float = 1.0
    loss: str = "cosine"  # cosine | smooth_l1
    predictor_layers: int = 1  # 1: linear; n: an MLP of n layers
    shared_pass: bool = False  # the masked student pass is the contrastive image pass too


@HEADS.register("mim_feature")
class MimFeatureHead(Head):
    Config = MimFeatureConfig

    def __init__(self, cfg: MimFeatureConfig, model: nn.Module):
        super().__init__()
        tower = token_tower(model, "mim_feature")
        check_choice("mim_feature", "loss", cfg.loss, LOSSES)
        if cfg.predictor_layers < 1:
            raise ConfigError(f"heads.mim_feature.predictor_layers must be at least 1, got {cfg.predictor_layers}")
        self.cfg, self.total_steps = cfg, None
        width = tower.token_width
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.predictor = mlp([width] * (cfg.predictor_layers + 1))
        self.teacher = EmaTeacher({"tower": tower if cfg.teacher == "ema" else load_frozen_tower(tower, cfg.teacher)})

    def setup(self, total_steps: int) -> None:
        self.total_steps = total_steps

    @property
    def shares_image_pass(self) -> bool:
        return self.cfg.shared_pass

    def encode_images(self, batch: dict, model: nn.Module) -> dict[str, torch.Tensor]:
        return model.visual.forward_tokens(batch["images"], field(batch, "mim_mask", "mim_feature"), self.mask_token)

    def forward(self, batch: dict, outputs: dict, model: nn.Module) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            target = self.teacher["tower"].forward_tokens(batch["images"])["patch_tokens"]
        encoded = outputs["image_pass"] if self.cfg.shared_pass else self.encode_images(batch, model)
        prediction = self.predictor(encoded["patch_tokens"])
        if self.cfg.loss == "cosine":
            per_patch = 1 - F.cosine_similarity(prediction, target, dim=-1)
        else:
            per_patch = F.smooth_l1_loss(prediction, target, reduction="none").mean(-1)
        mask = batch["mim_mask"].flatten(1).to(per_patch.dtype)
        return {"mim_feature": (per_patch * mask).sum() / mask.sum().clamp(min=1)}

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        if self.cfg.teacher != "ema":
            return
        if self.total_steps is None:
            raise RuntimeError("MimFeatureHead.setup(total_steps) was not called (build_heads does it)")
        self.teacher.update({"tower": model.visual},
                            momentum_at(step - 1, self.total_steps, self.cfg.momentum, self.cfg.final_momentum))
