"""Models: image towers, text towers, tokenizers and the dual encoder that joins them."""
from __future__ import annotations

from vlp.config import ModelConfig
from vlp.models.dual_encoder import DualEncoder
from vlp.models.image_towers import IMAGE_TOWERS
from vlp.models.text_towers import TEXT_TOWERS
from vlp.models.tokenizers import TOKENIZERS, Tokenizer, build_tokenizer


def build_model(cfg: ModelConfig) -> tuple[DualEncoder, Tokenizer]:
    tokenizer = build_tokenizer(cfg.tokenizer)
    return DualEncoder(cfg, tokenizer), tokenizer


__all__ = ["DualEncoder", "IMAGE_TOWERS", "TEXT_TOWERS", "TOKENIZERS", "Tokenizer", "build_model",
           "build_tokenizer"]
