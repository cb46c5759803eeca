"""Masked image modeling with pixel targets: SimMIM (Xie et al. 2022) and MAE (He et al. 2022).

The student tower sees the main view with the ``mim_mask`` patches either replaced by a learned mask token
(``mode: mask_token``, SimMIM/GMML) or dropped (``mode: drop``, MAE: the encoder sees only the visible patches and
the decoder fills the gaps with its own mask token). Masks are random or block-wise (GMML, BEiT), made on the data
workers (``data.views.mask``, ``mask_ratio``, ``mask_patch_size``). A light decoder, one linear layer (SimMIM)
or a few transformer blocks (MAE), regresses the pixels of each patch, normalized per patch (MAE's
``norm_pix_loss``). The loss counts the masked patches only. Term: ``mim_pixel``.
With ``shared_pass: true`` the masked pass is also the image-text loss's image pass, so the head costs only
its decoder: SimMIM on the contrastive pass, or, with ``mode: drop``, FLIP's patch-dropped pass plus an MAE
decoder (Li et al. 2023; Weers et al. 2023).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError
from vlp.heads import HEADS, Head
from vlp.heads.layers import check_choice, field, token_tower

MODES = ("mask_token", "drop")
LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}


@dataclass
class MimPixelConfig:
    mode: str = "mask_token"  # mask_token (SimMIM) | drop (MAE)
    decoder_layers: int = 0  # 0: one linear layer (SimMIM); n: n transformer blocks (MAE: 8)
    decoder_width: int = 0  # 0: the tower's width
    decoder_heads: int = 4
    norm_pix: bool = True  # targets normalized per patch (MAE's norm_pix_loss)
    loss: str = "mse"  # mse (MAE) | l1 (SimMIM)
    shared_pass: bool = False  # the masked pass is the contrastive image pass too (drop: FLIP + MAE)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, H/p * W/p, p * p * 3], patches in the tower's row-major order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class PixelDecoder(nn.Module):
    """Tokens [B, L, W] -> pixels [B, L, p*p*3]: a linear layer, or embed + position + blocks + linear."""

    def __init__(self, width: int, patches: int, pixels: int, cfg: MimPixelConfig):
        super().__init__()
        inner = cfg.decoder_width or width
        self.layers = cfg.decoder_layers
        if self.layers:
            self.embed = nn.Linear(width, inner)
            self.positions = nn.Parameter(torch.randn(patches, inner) * 0.02)
            block = nn.TransformerEncoderLayer(inner, cfg.decoder_heads, 2 * inner, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(block, cfg.decoder_layers, norm=nn.LayerNorm(inner),
                                                enable_nested_tensor=False)
        self.pred = nn.Linear(inner, pixels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.layers:
            tokens = self.blocks(tokens + self.positions.to(tokens.dtype))
        return self.pred(tokens)


@HEADS.register("mim_pixel")
class MimPixelHead(Head):
    Config = MimPixelConfig

    def __init__(self, cfg: MimPixelConfig, model: nn.Module):
        super().__init__()
        tower = token_tower(model, "mim_pixel")
        check_choice("mim_pixel", "mode", cfg.mode, MODES)
        check_choice("mim_pixel", "loss", cfg.loss, LOSSES)
        if cfg.mode == "drop" and not cfg.decoder_layers:
            raise ConfigError("heads.mim_pixel.mode=drop needs heads.mim_pixel.decoder_layers >= 1: a linear "
                              "decoder cannot see the visible patches from a dropped one")
        self.cfg, self.patch = cfg, tower.patch_size
        width = tower.token_width
        inner = cfg.decoder_width or width
        patches = (tower.image_size // self.patch) ** 2
        self.decoder = PixelDecoder(width, patches, 3 * self.patch ** 2, cfg)
        token_shape = inner if cfg.mode == "drop" else width  # drop: the decoder's; mask_token: the encoder's
        self.mask_token = nn.Parameter(torch.zeros(token_shape))

    @property
    def shares_image_pass(self) -> bool:
        return self.cfg.shared_pass

    def encode_images(self, batch: dict, model: nn.Module) -> dict[str, torch.Tensor]:
        """The masked pass: mask tokens on the masked patches, or (drop) the visible patches only."""
        mask, images = field(batch, "mim_mask", "mim_pixel"), batch["images"]
        if self.cfg.mode == "mask_token":
            return model.visual.forward_tokens(images, mask, self.mask_token)
        keep = visible_patches(mask)
        return {**model.visual.forward_tokens(images, keep=keep), "keep": keep}

    def forward(self, batch: dict, outputs: dict, model: nn.Module) -> dict[str, torch.Tensor]:
        encoded = outputs["image_pass"] if self.cfg.shared_pass else self.encode_images(batch, model)
        tokens = encoded["patch_tokens"]
        if self.decoder.layers:
            tokens = self.decoder.embed(tokens)
        if self.cfg.mode == "drop":  # MAE: the visible patches among decoder mask tokens on the full grid
            full = self.mask_token.to(tokens.dtype).expand(len(tokens), batch["mim_mask"][0].numel(), -1)
            keep = encoded["keep"].unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = full.scatter(1, keep, tokens)
        prediction = self.decoder(tokens)
        target = patchify(batch["images"], self.patch)
        if self.cfg.norm_pix:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = LOSSES[self.cfg.loss](prediction, target, reduction="none").mean(-1)
        mask = batch["mim_mask"].flatten(1).to(per_patch.dtype)
        return {"mim_pixel": (per_patch * mask).sum() / mask.sum().clamp(min=1)}


def visible_patches(mask: torch.Tensor) -> torch.Tensor:
    """[B, h, w] masks with the same count per image -> [B, K] indices of the visible patches, in grid order."""
    flat = mask.flatten(1)
    counts = flat.sum(1)
    if counts.min() != counts.max():
        raise ConfigError("heads.mim_pixel.mode=drop needs the same number of masked patches in every image: "
                          "set data.views.mask_ratio to [r, r]")
    return torch.argsort(flat.to(torch.int8), dim=1, stable=True)[:, :flat.shape[1] - int(counts[0])]
