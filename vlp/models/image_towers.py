"""Image towers: any timm model, or OpenCLIP's vision transformer, projected into the shared embedding space.

Every tower maps ``images [B, 3, H, W] -> features [B, embed_dim]`` and carries its preprocessing
(``image_size``, ``mean``, ``std``, ``interpolation``). Module names follow OpenCLIP (``trunk`` + ``head.proj``
for timm, OpenCLIP's own ``VisionTransformer`` otherwise), so export to OpenCLIP is a rename of the prefix.
"""
from __future__ import annotations

import difflib
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from vlp.config import ConfigError, ImageTowerConfig
from vlp.models.weights import load_state_dict_file
from vlp.utils import Registry

IMAGE_TOWERS: Registry[type[nn.Module]] = Registry("image tower")


def _timm_model_name(name: str) -> str:
    import timm

    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ConfigError(f"unknown timm model '{name}' (model.image.name){hint}; timm.list_models() lists all")
    return name


def _check_patch_grid(image_size: int, patch_size: int) -> None:
    if image_size % patch_size:
        raise ConfigError(f"image size {image_size} is not a multiple of the patch size {patch_size} "
                          "(model.image.image_size)")


@IMAGE_TOWERS.register("timm")
class TimmTower(nn.Module):
    """A timm trunk without its classifier, then a linear projection (OpenCLIP's ``TimmModel`` layout)."""

    def __init__(self, cfg: ImageTowerConfig, embed_dim: int):
        super().__init__()
        import timm

        name = _timm_model_name(cfg.name)
        kwargs = dict(cfg.kwargs)
        if cfg.patch_dropout:
            kwargs["patch_drop_rate"] = cfg.patch_dropout
        vit_like = "img_size" in kwargs or any(k in name for k in ("vit", "deit", "eva", "beit"))
        if vit_like:
            kwargs.setdefault("img_size", cfg.image_size)
        try:
            self.trunk = timm.create_model(name, pretrained=False, num_classes=0, global_pool=cfg.pool, **kwargs)
        except TypeError as err:
            raise ConfigError(f"timm model '{name}' does not accept these options {sorted(kwargs)}: {err}") from None
        patch_embed = getattr(self.trunk, "patch_embed", None)
        if patch_embed is not None and hasattr(patch_embed, "patch_size"):
            _check_patch_grid(cfg.image_size, patch_embed.patch_size[0])
        elif cfg.patch_dropout:
            raise ConfigError(f"patch dropout needs a ViT image tower; '{name}' has no patch embedding")
        if cfg.pretrained:
            load_timm_checkpoint(self.trunk, cfg.pretrained)
        self.head = nn.Sequential(OrderedDict(
            drop=nn.Dropout(0.0), proj=nn.Linear(self.trunk.num_features, embed_dim, bias=cfg.proj_bias)))
        data_cfg = timm.data.resolve_data_config(model=self.trunk)
        self.image_size = cfg.image_size
        self.mean = tuple(cfg.mean or data_cfg["mean"])
        self.std = tuple(cfg.std or data_cfg["std"])
        self.interpolation = cfg.interpolation or data_cfg.get("interpolation", "bicubic")
        self.cfg = cfg

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))

    def lock(self, unlocked_groups: int = 0) -> None:
        from timm.models import group_parameters

        groups = group_parameters(self.trunk, self.trunk.group_matcher())
        frozen_up_to = max(groups) - unlocked_groups
        for group_id, names in groups.items():
            if group_id <= frozen_up_to:
                for param_name in names:
                    self.trunk.get_parameter(param_name).requires_grad_(False)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    def open_clip_vision_cfg(self) -> dict:
        import timm

        default_size = timm.get_pretrained_cfg(self.cfg.name).input_size[-1]
        if self.cfg.kwargs or (hasattr(self.trunk, "patch_embed") and default_size != self.image_size):
            raise ConfigError("OpenCLIP's timm adapter rebuilds a timm model from its name alone, so it cannot "
                              f"reproduce model.image.kwargs={self.cfg.kwargs} or image_size={self.image_size}; "
                              "use model.image.type=open_clip_vit for a custom ViT that exports")
        return dict(timm_model_name=self.cfg.name, timm_model_pretrained=False, timm_pool=self.cfg.pool,
                    timm_proj="linear", timm_proj_bias=self.cfg.proj_bias, image_size=self.image_size)


@IMAGE_TOWERS.register("open_clip_vit")
class OpenClipViTTower(nn.Module):
    """OpenCLIP's own ``VisionTransformer``; ``model.image.kwargs`` are its ``CLIPVisionCfg`` fields."""

    def __init__(self, cfg: ImageTowerConfig, embed_dim: int):
        super().__init__()
        from open_clip.model import CLIPVisionCfg, _build_vision_tower

        fields = set(CLIPVisionCfg.__dataclass_fields__)
        unknown = set(cfg.kwargs) - fields
        if unknown:
            raise ConfigError(f"unknown OpenCLIP vision option(s) {sorted(unknown)}; valid: {', '.join(sorted(fields))}")
        self.vision_cfg = dict(cfg.kwargs, image_size=cfg.image_size, patch_dropout=cfg.patch_dropout)
        _check_patch_grid(cfg.image_size, self.vision_cfg.get("patch_size", CLIPVisionCfg.patch_size))
        self.visual = _build_vision_tower(embed_dim, CLIPVisionCfg(**self.vision_cfg))
        if cfg.pretrained:
            state = load_state_dict_file(cfg.pretrained)
            state = {k.removeprefix("visual."): v for k, v in state.items() if not k.startswith("text")}
            self.visual.load_state_dict(state)
        self.image_size = cfg.image_size
        self.mean = tuple(cfg.mean or self.visual.image_mean or (0.48145466, 0.4578275, 0.40821073))
        self.std = tuple(cfg.std or self.visual.image_std or (0.26862954, 0.26130258, 0.27577711))
        self.interpolation = cfg.interpolation or "bicubic"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def lock(self, unlocked_groups: int = 0) -> None:
        self.visual.lock(unlocked_groups=unlocked_groups)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def open_clip_vision_cfg(self) -> dict:
        return dict(self.vision_cfg)


def load_timm_checkpoint(trunk: nn.Module, path: str | Path) -> None:
    """Load a local classification checkpoint into a timm trunk, without its classifier.

    Keys are matched by name. A checkpoint saved by another implementation of the same architecture (for
    example EfficientNet-PyTorch's ``_blocks.0._depthwise_conv``) is matched by position instead, and only when
    every tensor's shape agrees one to one.
    """
    state = load_state_dict_file(path)
    target = trunk.state_dict()
    by_name = {k: v for k, v in state.items() if k in target}
    if len(by_name) == len(target):
        trunk.load_state_dict(by_name)
        return
    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    wanted = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    source = source[:len(wanted)]  # a trailing classifier is not part of the trunk
    mismatch = next(((sk, tk) for (sk, sv), (tk, tv) in zip(source, wanted) if sv.shape != tv.shape), None)
    if len(source) != len(wanted) or mismatch:
        where = f"'{mismatch[0]}' vs '{mismatch[1]}'" if mismatch else f"{len(source)} vs {len(wanted)} tensors"
        raise ConfigError(f"checkpoint {path} does not fit timm model {type(trunk).__name__}: {where}")
    remapped = {tk: sv for (_, sv), (tk, _) in zip(source, wanted)}
    missing, _ = trunk.load_state_dict(remapped, strict=False)
    if any(not k.endswith("num_batches_tracked") for k in missing):
        raise ConfigError(f"checkpoint {path} leaves timm weights unset: {missing[:3]}")
