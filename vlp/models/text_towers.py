"""Text towers: a CLIP-style causal transformer, or any HF ``transformers`` encoder from a local directory.

Every tower maps ``tokens [B, L] -> features [B, embed_dim]``. The CLIP tower keeps OpenCLIP's
``TextTransformer`` parameter names, so its weights load into OpenCLIP unchanged, but runs attention through
``F.scaled_dot_product_attention(is_causal=True)`` (flash / memory-efficient kernels) with a fused QKV.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlp.config import ConfigError, TextTowerConfig
from vlp.models.tokenizers import Tokenizer
from vlp.utils import Registry

TEXT_TOWERS: Registry[type[nn.Module]] = Registry("text tower")


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ConfigError(f"text width {width} is not divisible by heads {heads} (model.text)")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, hidden), gelu=nn.GELU(),
                                             c_proj=nn.Linear(hidden, width)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(ResidualBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = checkpoint(block, x, use_reentrant=False) if self.grad_checkpointing and self.training else block(x)
        return x


@TEXT_TOWERS.register("clip")
class ClipTextTower(nn.Module):
    """CLIP's text transformer (Radford et al. 2021): causal attention, features taken at the end-of-text token."""

    def __init__(self, cfg: TextTowerConfig, embed_dim: int, tokenizer: Tokenizer):
        super().__init__()
        self.context_length = tokenizer.context_length
        self.vocab_size = tokenizer.vocab_size
        self.eos_id = tokenizer.eos_id
        if self.eos_id not in tokenizer("a")[0].tolist():  # pooling would silently take position 0
            raise ConfigError(f"the {tokenizer.kind} tokenizer does not end a text with its end-of-text token "
                              f"{self.eos_id}, where the CLIP text tower pools (model.tokenizer)")
        self.token_embedding = nn.Embedding(tokenizer.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(self.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        self.cfg = cfg
        self._init_weights()

    def _init_weights(self) -> None:
        width, layers = self.cfg.width, self.cfg.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std, attn_std, fc_std = width ** -0.5 * (2 * layers) ** -0.5, width ** -0.5, (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.ln_final(self.transformer(x))
        eos_position = (tokens == self.eos_id).int().argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0], device=x.device), eos_position]
        return pooled @ self.text_projection

    def lock(self, unlocked_layers: int = 0) -> None:
        keep = set(range(self.cfg.layers - unlocked_layers, self.cfg.layers)) if unlocked_layers else set()
        for name, param in self.named_parameters():
            layer = int(name.split(".")[2]) if name.startswith("transformer.resblocks.") else None
            unlocked_tail = unlocked_layers and name.startswith(("ln_final", "text_projection"))
            param.requires_grad_(layer in keep or bool(unlocked_tail))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def open_clip_text_cfg(self) -> dict:
        return dict(context_length=self.context_length, vocab_size=self.vocab_size, width=self.cfg.width,
                    heads=self.cfg.heads, layers=self.cfg.layers, mlp_ratio=self.cfg.mlp_ratio,
                    pool_type="eos", eos_id=self.eos_id)


@TEXT_TOWERS.register("hf")
class HFTextTower(nn.Module):
    """A ``transformers`` encoder (BERT, MiniLM, XLM-R, ...) from a local directory, pooled and projected."""

    def __init__(self, cfg: TextTowerConfig, embed_dim: int, tokenizer: Tokenizer):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if not cfg.path or not Path(cfg.path, "config.json").is_file():
            raise ConfigError(f"HF text tower directory not found or has no config.json: {cfg.path!r} (model.text.path)")
        hf_config = AutoConfig.from_pretrained(cfg.path)
        if tokenizer.vocab_size > hf_config.vocab_size:
            raise ConfigError(f"tokenizer has {tokenizer.vocab_size} tokens but the text tower at {cfg.path} embeds "
                              f"{hf_config.vocab_size}: the tokenizer does not match the text tower")
        max_length = getattr(hf_config, "max_position_embeddings", None)
        if max_length is not None and tokenizer.context_length > max_length:
            raise ConfigError(f"model.tokenizer.context_length {tokenizer.context_length} exceeds the "
                              f"{max_length} positions of the text tower at {cfg.path}")
        if cfg.pooler not in ("mean", "cls"):
            raise ConfigError(f"unknown text pooler '{cfg.pooler}'; valid: mean, cls")
        self.transformer = (AutoModel.from_pretrained(cfg.path, attn_implementation="sdpa") if cfg.pretrained
                            else AutoModel.from_config(hf_config, attn_implementation="sdpa"))
        if getattr(self.transformer, "pooler", None) is not None:
            # BERT-style pooler output is never used: unused parameters would stall DDP's gradient reduction
            self.transformer.pooler = None
        width = hf_config.hidden_size
        if cfg.proj == "linear":
            self.proj = nn.Linear(width, embed_dim, bias=False)
        elif cfg.proj == "mlp":
            self.proj = nn.Sequential(nn.Linear(width, (width + embed_dim) // 2, bias=False), nn.GELU(),
                                      nn.Linear((width + embed_dim) // 2, embed_dim, bias=False))
        else:
            raise ConfigError(f"unknown text projection '{cfg.proj}'; valid: linear, mlp")
        self.pad_id = tokenizer.pad_id
        self.cfg = cfg

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != self.pad_id).long()
        hidden = self.transformer(input_ids=tokens, attention_mask=mask).last_hidden_state
        if self.cfg.pooler == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.proj(pooled)

    def _layers(self) -> nn.ModuleList:
        return max((m for m in self.transformer.modules() if isinstance(m, nn.ModuleList)), key=len)

    def lock(self, unlocked_layers: int = 0) -> None:
        self.transformer.requires_grad_(False)
        if unlocked_layers:
            self._layers()[-unlocked_layers:].requires_grad_(True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.transformer.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.transformer.gradient_checkpointing_disable()

    def open_clip_text_cfg(self) -> dict:
        raise ConfigError("export to OpenCLIP supports the CLIP text tower (model.text.type=clip); "
                          "an HF text tower is not exported yet")
