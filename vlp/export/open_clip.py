"""Export a vlp model as an OpenCLIP ``local-dir:`` model directory.

The directory holds ``open_clip_config.json``, ``open_clip_model.safetensors`` and, for HF/SentencePiece
tokenizers, the tokenizer files. ``open_clip.create_model_and_transforms('local-dir:DIR')`` and
``open_clip.get_tokenizer('local-dir:DIR')`` load it and give the same embeddings as vlp.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from vlp.api import load
from vlp.config import ConfigError
from vlp.models.image_towers import OpenClipViTTower
from vlp.utils import publish_directory

OPEN_CLIP_INTERPOLATIONS = ("bicubic", "bilinear")


def open_clip_state_dict(model) -> dict:
    state = {}
    for key, value in model.state_dict().items():
        if isinstance(model.visual, OpenClipViTTower) and key.startswith("visual.visual."):
            key = key.removeprefix("visual.")
        state[key] = value.detach().cpu().contiguous()
    return state


def export_open_clip(run: str | Path, output: str | Path) -> Path:
    loaded = load(run, device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    text_cfg = model.text.open_clip_text_cfg()
    if tokenizer.path:
        text_cfg["hf_tokenizer_name"] = Path(tokenizer.path).name  # OpenCLIP reads the tokenizer from DIR itself
    model_cfg = {"embed_dim": loaded.config.model.embed_dim, "custom_text": True,
                 "vision_cfg": model.visual.open_clip_vision_cfg(), "text_cfg": text_cfg}
    if model.logit_bias is not None:
        model_cfg["init_logit_bias"] = model.logit_bias.item()
    visual = model.visual
    if visual.interpolation not in OPEN_CLIP_INTERPOLATIONS:
        raise ConfigError(f"OpenCLIP resizes with {' or '.join(OPEN_CLIP_INTERPOLATIONS)} only, not "
                          f"'{visual.interpolation}' (model.image.interpolation)")
    preprocess_cfg = {"size": visual.image_size, "mean": list(visual.mean), "std": list(visual.std),
                      "interpolation": visual.interpolation, "resize_mode": "shortest"}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    try:
        (staging / "open_clip_config.json").write_text(
            json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2))
        save_file(open_clip_state_dict(model), str(staging / "open_clip_model.safetensors"))
        if tokenizer.path:
            tokenizer.save_pretrained(staging)
        publish_directory(staging, output, "open_clip_config.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output
