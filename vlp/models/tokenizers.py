"""Tokenizers: OpenCLIP's CLIP BPE, any HF tokenizer directory, and a SentencePiece-style BPE tokenizer trained
on the run's own captions.

Tokenization itself is OpenCLIP's (``SimpleTokenizer``, ``HFTokenizer``), so an exported model tokenizes
exactly as it did in vlp. vlp adds what the text tower needs to know: vocabulary size, pad and end-of-text ids.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from vlp.config import ConfigError, TokenizerConfig
from vlp.utils import Registry, publish_directory


@dataclass
class Tokenizer:
    encode: Callable[[list[str]], torch.Tensor]  # texts -> LongTensor [batch, context_length]
    vocab_size: int
    pad_id: int
    eos_id: int  # the text tower pools at this token
    context_length: int
    kind: str
    path: str | None = None  # HF tokenizer directory, when there is one

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        return self.encode([texts] if isinstance(texts, str) else list(texts))

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the tokenizer files alone (not the rest of an HF model directory) into ``directory``."""
        self.encode.save_pretrained(str(directory))


TOKENIZERS: Registry[Callable[[TokenizerConfig], Tokenizer]] = Registry("tokenizer")


@TOKENIZERS.register("clip_bpe")
def clip_bpe(cfg: TokenizerConfig) -> Tokenizer:
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer(context_length=cfg.context_length)
    return Tokenizer(tok, len(tok.encoder), 0, tok.eot_token_id, cfg.context_length, "clip_bpe")


@TOKENIZERS.register("hf")
def hf_directory(cfg: TokenizerConfig) -> Tokenizer:
    from open_clip.tokenizer import HFTokenizer

    if not cfg.path or not Path(cfg.path).is_dir():
        raise ConfigError(f"tokenizer directory not found: {cfg.path!r} (model.tokenizer.path)")
    tok = HFTokenizer(str(cfg.path), context_length=cfg.context_length)
    inner = tok.tokenizer
    eos = inner.eos_token_id if inner.eos_token_id is not None else inner.sep_token_id
    if eos is None or inner.pad_token_id is None:
        raise ConfigError(f"HF tokenizer at {cfg.path} has no end-of-text (eos/sep) or pad token")
    return Tokenizer(tok, len(inner), inner.pad_token_id, eos, cfg.context_length, cfg.type, str(cfg.path))


@TOKENIZERS.register("sentencepiece")
def sentencepiece(cfg: TokenizerConfig) -> Tokenizer:
    if cfg.path is None:
        raise ConfigError("model.tokenizer.path is unset: train one with `vlp tokenizer train`, or let `vlp train` "
                          "train it on the training captions")
    return hf_directory(cfg)


def build_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    try:
        factory = TOKENIZERS.get(cfg.type)
    except KeyError as err:
        raise ConfigError(err.args[0]) from None
    return factory(cfg)


def train_sentencepiece(texts: Iterable[str], vocab_size: int, output_dir: str | Path) -> Path:
    """Train a lower-casing SentencePiece-style BPE tokenizer (HF ``tokenizers``) and save it as an HF tokenizer
    directory, which ``transformers.AutoTokenizer`` and OpenCLIP's ``HFTokenizer`` load. Ids 0, 1, 2 are pad,
    end-of-text and unknown. ``vocab_size`` is an upper bound: a small caption set yields fewer pieces.
    """
    from tokenizers import SentencePieceBPETokenizer, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    sp = SentencePieceBPETokenizer(unk_token="<unk>")
    sp.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    sp.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                           min_frequency=2, show_progress=False)
    sp.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=sp._tokenizer, pad_token="<pad>", eos_token="</s>",
                                 unk_token="<unk>")
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}."))
    try:
        hf.save_pretrained(staging)
        return publish_directory(staging, output_dir, "tokenizer.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
