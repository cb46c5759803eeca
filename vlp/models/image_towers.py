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
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError, ImageTowerConfig
from vlp.models.weights import load_into, load_state_dict_file
from vlp.utils import Registry

IMAGE_TOWERS: Registry[type[nn.Module]] = Registry("image tower")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")  # what vlp.data.transforms resizes with


def _timm_model_name(name: str) -> str:
    import timm

    if not timm.is_model(name):  # also takes a pretrained tag, e.g. resnet18.a1_in1k
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ConfigError(f"unknown timm model '{name}' (model.image.name){hint}; timm.list_models() lists all")
    return name


def _check_patch_grid(image_size: int, patch_size: int) -> None:
    if image_size % patch_size:
        raise ConfigError(f"image size {image_size} is not a multiple of the patch size {patch_size} "
                          "(model.image.image_size)")


def _interpolation(name: str) -> str:
    if name not in INTERPOLATIONS:
        raise ConfigError(f"unknown model.image.interpolation '{name}'; valid: {', '.join(INTERPOLATIONS)}")
    return name


def _check_patch_dropout(rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"model.image.patch_dropout is the fraction of patches dropped, in [0, 1); got {rate}")


def _create_timm_trunk(name: str, pool: str, kwargs: dict) -> nn.Module:
    """Built as OpenCLIP's ``TimmModel`` builds it (create, then drop the classifier), so that the layers, and
    their names, match on export: a ViT created with ``global_pool='avg'`` would get an ``fc_norm`` in place of
    ``norm``. An empty ``pool`` keeps the model's own pooling."""
    import timm

    try:
        trunk = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as err:
        if "patch_drop_rate" in str(err):
            raise ConfigError(f"patch dropout needs a ViT image tower; timm model '{name}' has no patch embedding "
                              "(model.image.patch_dropout)") from None
        raise ConfigError(f"timm model '{name}' does not accept these options {sorted(kwargs)}: {err}") from None
    trunk.reset_classifier(0, **({"global_pool": pool} if pool else {}))
    return trunk


@IMAGE_TOWERS.register("timm")
class TimmTower(nn.Module):
    """A timm trunk without its classifier, then a linear projection (OpenCLIP's ``TimmModel`` layout)."""

    def __init__(self, cfg: ImageTowerConfig, embed_dim: int):
        super().__init__()
        import timm

        name = _timm_model_name(cfg.name)
        _check_patch_dropout(cfg.patch_dropout)
        kwargs = dict(cfg.kwargs)
        if cfg.patch_dropout:
            kwargs["patch_drop_rate"] = cfg.patch_dropout
        vit_like = "img_size" in kwargs or any(k in name for k in ("vit", "deit", "eva", "beit"))
        if vit_like:
            kwargs.setdefault("img_size", cfg.image_size)
        self.trunk = _create_timm_trunk(name, cfg.pool, kwargs)
        patch_embed = getattr(self.trunk, "patch_embed", None)
        if patch_embed is not None and hasattr(patch_embed, "patch_size"):
            _check_patch_grid(cfg.image_size, patch_embed.patch_size[0])
            built_for = getattr(patch_embed, "img_size", None)
            if built_for is not None and tuple(built_for) != (cfg.image_size, cfg.image_size):
                raise ConfigError(f"timm model '{name}' takes {built_for[0]}px images but model.image.image_size is "
                                  f"{cfg.image_size}; set model.image.kwargs.img_size to match, or leave it unset")
        elif cfg.patch_dropout:
            raise ConfigError(f"patch dropout needs a ViT image tower; timm model '{name}' has no patch embedding "
                              "(model.image.patch_dropout)")
        if cfg.pretrained:
            load_timm_checkpoint(self.trunk, cfg.pretrained, name)
        self.head = nn.Sequential(OrderedDict(
            drop=nn.Dropout(0.0), proj=nn.Linear(self.trunk.num_features, embed_dim, bias=cfg.proj_bias)))
        data_cfg = timm.data.resolve_data_config(model=self.trunk)
        self.image_size = cfg.image_size
        self.patch_size = patch_embed.patch_size[0] if hasattr(patch_embed, "patch_size") else None  # MIM masks
        self.mean = tuple(cfg.mean or data_cfg["mean"])
        self.std = tuple(cfg.std or data_cfg["std"])
        self.interpolation = _interpolation(cfg.interpolation or data_cfg.get("interpolation", "bicubic"))
        self.cfg = cfg

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))

    def forward_tokens(self, images: torch.Tensor, mask: torch.Tensor | None = None,
                       mask_token: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> dict:
        """``OpenClipViTTower.forward_tokens`` (the same arguments and outputs) on a timm ``VisionTransformer``
        trunk, see ``tokens_unsupported``; ``forward`` stays timm's own, fast path. Positional embeddings for
        another grid are resampled as timm's ``dynamic_img_size`` resamples them."""
        from timm.models import checkpoint_seq

        trunk = self.trunk
        x = trunk.patch_embed.proj(images)  # not patch_embed itself: it refuses local crops (strict_img_size)
        grid = x.shape[-2:]
        x = trunk.patch_embed.norm(x.flatten(2).transpose(1, 2))
        if mask is not None:
            x = torch.where(mask.flatten(1).unsqueeze(-1), mask_token.to(x.dtype), x)
        prefix, positions = self._prefix_and_positions(grid)
        x = x + positions
        if keep is not None:
            x = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = trunk.norm_pre(trunk.pos_drop(torch.cat([prefix.expand(len(x), -1, -1), x], dim=1)))
        x = trunk.norm(checkpoint_seq(trunk.blocks, x) if trunk.grad_checkpointing else trunk.blocks(x))
        pooled = trunk.forward_head(x, pre_logits=True)
        return {"pooled": self.head(pooled), "global": pooled, "patch_tokens": x[:, trunk.num_prefix_tokens:]}

    def _prefix_and_positions(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix tokens [1, P, W] with their positions (none with ``no_embed_class``), and the patch
        positions [1, h * w, W] for ``grid``."""
        from timm.layers import resample_abs_pos_embed

        trunk, tokens = self.trunk, self._prefix_tokens()
        embedded = 0 if trunk.no_embed_class else trunk.num_prefix_tokens
        table = resample_abs_pos_embed(trunk.pos_embed, new_size=grid, old_size=trunk.patch_embed.grid_size,
                                       num_prefix_tokens=embedded)
        prefix = torch.cat(tokens, dim=1) if tokens else table[:, :0]
        if trunk.no_embed_class:
            return prefix, table
        return prefix + table[:, :embedded], table[:, embedded:]

    def _prefix_tokens(self) -> list[torch.Tensor]:
        """The learned tokens timm puts before the patches, in its order: class, distillation (DeiT), registers."""
        trunk = self.trunk
        return [t for t in (trunk.cls_token, getattr(trunk, "dist_token", None), trunk.reg_token) if t is not None]

    @property
    def tokens_unsupported(self) -> str | None:
        """Why ``forward_tokens`` cannot run on this trunk, for the token heads' ConfigError; None when it can."""
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import VisionTransformer

        trunk, model = self.trunk, f"TimmTower with timm model '{self.cfg.name}' ({type(self.trunk).__name__})"
        if not isinstance(trunk, VisionTransformer):
            return f"got {model}, which is not a timm VisionTransformer"
        if not isinstance(trunk.patch_embed, PatchEmbed):
            return f"got {model}, whose patch embedding is a {type(trunk.patch_embed).__name__}, not a PatchEmbed"
        if trunk.pos_embed is None:
            return f"got {model}, which has no absolute positional embeddings (pos_embed)"
        if sum(t.shape[1] for t in self._prefix_tokens()) != trunk.num_prefix_tokens:
            return f"got {model}, whose {trunk.num_prefix_tokens} prefix tokens are not its class/register tokens"
        return None

    @property
    def token_width(self) -> int:
        return self.trunk.embed_dim

    def lock(self, unlocked_groups: int = 0) -> None:
        from timm.models import group_parameters

        groups = group_parameters(self.trunk, self.trunk.group_matcher())
        frozen_up_to = max(groups) - unlocked_groups
        for group_id, names in groups.items():
            if group_id <= frozen_up_to:
                for param_name in names:
                    self.trunk.get_parameter(param_name).requires_grad_(False)
        # a locked layer must not drift either: frozen BatchNorms stop updating their running statistics
        self.frozen_norms = [m for m in self.trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                             and not any(p.requires_grad for p in m.parameters())]
        self.train(self.training)

    def train(self, mode: bool = True) -> TimmTower:
        super().train(mode)
        for norm in getattr(self, "frozen_norms", ()):
            norm.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    def open_clip_vision_cfg(self) -> dict:
        default_size = self.trunk.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
        if self.cfg.kwargs or (hasattr(self.trunk, "patch_embed") and default_size != self.image_size):
            raise ConfigError("OpenCLIP's timm adapter rebuilds a timm model from its name alone, so it cannot "
                              f"reproduce model.image.kwargs={self.cfg.kwargs} or image_size={self.image_size}; "
                              "use model.image.type=open_clip_vit for a custom ViT that exports")
        return dict(timm_model_name=self.cfg.name, timm_model_pretrained=False, timm_pool=self.cfg.pool,
                    timm_proj="linear", timm_proj_bias=self.cfg.proj_bias, image_size=self.image_size,
                    patch_dropout=self.cfg.patch_dropout)


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
        _check_patch_dropout(cfg.patch_dropout)
        self.vision_cfg = dict(cfg.kwargs, image_size=cfg.image_size, patch_dropout=cfg.patch_dropout)
        _check_patch_grid(cfg.image_size, self.vision_cfg.get("patch_size", CLIPVisionCfg.patch_size))
        self.visual = _build_vision_tower(embed_dim, CLIPVisionCfg(**self.vision_cfg))
        _pack_self_attention(self.visual)
        if cfg.pretrained:
            load_into(self.visual, _vision_state(load_state_dict_file(cfg.pretrained)), cfg.pretrained)
        self.image_size = cfg.image_size
        self.patch_size = self.vision_cfg.get("patch_size", CLIPVisionCfg.patch_size)
        self.mean = tuple(cfg.mean or getattr(self.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
        self.std = tuple(cfg.std or getattr(self.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
        self.interpolation = _interpolation(cfg.interpolation or "bicubic")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def forward_tokens(self, images: torch.Tensor, mask: torch.Tensor | None = None,
                       mask_token: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> dict:
        """The token-level path the image-tower heads need; ``forward`` stays OpenCLIP's own, fast path.

        ``mask`` [B, h, w] (True = masked) replaces those patch embeddings by ``mask_token`` [W] (SimMIM, iBOT);
        ``keep`` [B, K] keeps only those patches (MAE). Images of another size than ``image_size`` (local crops)
        get bicubically resized positional embeddings (DINO). No patch dropout: the heads need the whole grid.
        Returns ``pooled`` [B, embed_dim] (the projected embedding), ``global`` [B, W] (before the projection)
        and ``patch_tokens`` [B, L, W] (or [B, K, W] with ``keep``).
        """
        visual = self.visual
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        if mask is not None:
            x = torch.where(mask.flatten(1).unsqueeze(-1), mask_token.to(x.dtype), x)
        positions = self._positions(images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        x = x + positions[1:].to(x.dtype)
        if keep is not None:
            x = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (visual.class_embedding + positions[0]).to(x.dtype).expand(len(x), 1, -1)
        x = visual.transformer(visual.ln_pre(torch.cat([cls, x], dim=1)))
        pooled, tokens = visual._pool(x)
        return {"pooled": pooled @ visual.proj if visual.proj is not None else pooled, "global": pooled,
                "patch_tokens": tokens}

    def _positions(self, height: int, width: int) -> torch.Tensor:
        """The positional embeddings [1 + height * width, W], the patch part resized for another grid."""
        table = self.visual.positional_embedding
        grid = self.image_size // self.patch_size
        if (height, width) == (grid, grid):
            return table
        patches = table[1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(height, width), mode="bicubic", align_corners=False)
        return torch.cat([table[:1], patches.flatten(2)[0].T])

    @property
    def token_width(self) -> int:
        return self.visual.class_embedding.shape[-1]

    def lock(self, unlocked_groups: int = 0) -> None:
        self.visual.lock(unlocked_groups=unlocked_groups)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def open_clip_vision_cfg(self) -> dict:
        return dict(self.vision_cfg)


class PackedSelfAttention(nn.Module):
    """Stands in for the ``nn.MultiheadAttention`` of an OpenCLIP ``ResidualAttentionBlock`` (batch-first
    self-attention): the same parameters under the same names, so checkpoints and export are unchanged, run as one
    batch-first ``F.scaled_dot_product_attention`` instead of MHA's sequence-first transposes and copies."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.num_heads, self.dropout = mha.num_heads, mha.dropout
        self.in_proj_weight, self.in_proj_bias, self.out_proj = mha.in_proj_weight, mha.in_proj_bias, mha.out_proj

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if key is not query or value is not query or need_weights:
            raise NotImplementedError("PackedSelfAttention is self-attention without attention weights")
        batch, length, width = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # MHA: True masks out; SDPA: True keeps
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(attn_mask, float("-inf"))
        if attn_mask is not None and attn_mask.dim() == 3:  # MHA's [batch * heads, L, S]
            attn_mask = attn_mask.view(batch, self.num_heads, *attn_mask.shape[-2:])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width)), None


def _pack_self_attention(visual: nn.Module) -> None:
    """Swap each plain self-attention MHA of OpenCLIP's ViT for ``PackedSelfAttention`` (same outputs)."""
    from open_clip.transformer import ResidualAttentionBlock

    for block in getattr(getattr(visual, "transformer", None), "resblocks", ()):
        attn = getattr(block, "attn", None)
        if (type(block) is ResidualAttentionBlock and type(attn) is nn.MultiheadAttention and attn.batch_first
                and attn._qkv_same_embed_dim and attn.in_proj_bias is not None and attn.bias_k is None
                and not attn.add_zero_attn and not hasattr(block, "ln_1_kv")):
            block.attn = PackedSelfAttention(attn)


def _vision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower's tensors of a whole OpenCLIP checkpoint (``visual.*``), or a vision-only file as it is."""
    if any(k.startswith("visual.") for k in state):
        return {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    return state


def load_timm_checkpoint(trunk: nn.Module, path: str | Path, name: str) -> None:
    """Load a local classification checkpoint into the timm trunk ``name``, without its classifier.

    Keys are matched by name. A checkpoint saved by another implementation of the same architecture (for
    example EfficientNet-PyTorch's ``_blocks.0._depthwise_conv``) is matched by position instead, and only when
    every tensor's shape agrees one to one.
    """
    state = load_state_dict_file(path)
    target = trunk.state_dict()
    by_name = {k: v for k, v in state.items() if k in target}
    if len(by_name) == len(target):
        load_into(trunk, by_name, path)
        return
    if "_conv_stem.weight" in state and not name.startswith("tf_"):
        # EfficientNet-PyTorch computes as TensorFlow does ('same' padding, BatchNorm eps 1e-3); the same tensors
        # in timm's PyTorch-style model load without complaint and give wrong features
        raise ConfigError(f"checkpoint {path} is in EfficientNet-PyTorch layout, which needs TensorFlow-style "
                          f"padding: use the timm model 'tf_{name.split('.')[0]}' (model.image.name)")
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
