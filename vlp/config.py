"""Typed run configuration: YAML files in ``configs/`` resolved into dataclasses, with ``a.b=value`` overrides.

Unknown keys are rejected with the list of valid ones, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlp.errors import ConfigError


@dataclass
class ImageTowerConfig:
    type: str = "timm"  # a key of vlp.models.IMAGE_TOWERS
    name: str = "vit_base_patch16_224"  # timm model name (type=timm)
    image_size: int = 224
    pretrained: str | None = None  # local checkpoint file (timm) or OpenCLIP weights file
    pool: str = "avg"  # timm global pool ('avg', 'token', ...); '' keeps the model's own
    proj_bias: bool = False
    patch_dropout: float = 0.0  # FLIP: fraction of patches dropped while training (ViT towers)
    kwargs: dict = field(default_factory=dict)  # extra timm.create_model / OpenCLIP vision_cfg arguments
    mean: list[float] | None = None  # preprocessing; None takes the tower's own
    std: list[float] | None = None
    interpolation: str | None = None


@dataclass
class TextTowerConfig:
    type: str = "clip"  # a key of vlp.models.TEXT_TOWERS
    path: str | None = None  # HF model directory (type=hf)
    pretrained: bool = True  # type=hf: load the directory's weights, or only its architecture
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    pooler: str = "mean"  # type=hf: 'mean' or 'cls'
    proj: str = "linear"  # type=hf: 'linear' or 'mlp'


@dataclass
class TokenizerConfig:
    type: str = "clip_bpe"  # a key of vlp.models.tokenizers.TOKENIZERS
    path: str | None = None  # HF tokenizer directory (type=hf, or a trained sentencepiece tokenizer)
    vocab_size: int = 1024  # type=sentencepiece when trained at run start
    context_length: int = 77


@dataclass
class ModelConfig:
    embed_dim: int = 512
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    init_logit_scale: float = 2.6592  # log(1/0.07), CLIP
    init_logit_bias: float | None = None  # set (e.g. -10) to learn a bias, as the sigmoid loss needs
    lock_image: bool = False  # LiT: freeze the image tower
    lock_image_unlocked_groups: int = 0
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    grad_checkpointing: bool = False


@dataclass
class LossConfig:
    type: str = "clip"  # a key of vlp.losses.LOSSES
    weight: float = 1.0


@dataclass
class SourceConfig:
    """One dataset; ``data.train`` / ``data.val`` hold a path (one source) or a list of these (mixed by weight)."""

    path: str = "default"  # 'default' (embedded), tar shards ('/d/{00000..00099}.tar'), manifest, HF dir, folder
    type: str | None = None  # a key of vlp.data.sources.SOURCES; None infers it from the path
    weight: float = 1.0  # sampling weight when several sources are mixed
    image_field: str | None = None  # tar extensions 'jpg;png;webp', or the manifest / HF image column
    caption_fields: list[str] | None = None  # e.g. [txt, json.recaptions]; None: the format's usual field
    split: str = "train"  # the split of an HF DatasetDict
    templates: list[str] | None = None  # class folders: captions made from class names


@dataclass
class CaptionConfig:
    policy: str = "sample"  # 'sample': one caption per image per step; 'all': every caption, as positives
    weights: dict = field(default_factory=dict)  # caption field -> probability (policy=sample); {} = uniform
    max_per_image: int = 4  # policy=all: captions kept per image
    max_chars: int = 4096  # a longer caption is skipped as garbage


@dataclass
class AugmentConfig:
    enabled: bool = True  # false: the eval transform (resize + center crop)
    scale: list[float] = field(default_factory=lambda: [0.6, 1.0])  # RandomResizedCrop area range
    ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])
    hflip: float = 0.0  # probabilities / strengths; 0 turns each off
    color_jitter: float = 0.0
    grayscale: float = 0.0


@dataclass
class ViewsConfig:
    """Extra views for the self-supervised heads, emitted as named batch fields."""

    global_crops: int = 0
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_crops: int = 0
    local_size: int = 96
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    mask: str = "none"  # MIM masks over the image patches: none | random | block
    mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])  # drawn per image
    mask_patch_size: int = 0  # pixels per mask cell, a multiple of the tower's patch (SimMIM: 32); 0: the patch


@dataclass
class DataConfig:
    train: Any = "default"  # a source path, or a list of sources (see SourceConfig)
    val: Any = "default"  # the same, or null; evaluated on up to val_samples good samples
    val_samples: int = 2000
    batch_size: int = 256  # per device, per micro-batch
    num_workers: int = 0
    shuffle_buffer: int = 10000  # samples; tar shards only (indexed data is permuted exactly)
    max_pixels: int = 64_000_000  # larger images are skipped before they are decoded
    fast_decode: bool = True  # JPEGs decode at reduced scale when the crop cannot use the full resolution
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)


@dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 5e-4
    min_lr: float = 0.0
    warmup_steps: int = 100
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    grad_clip: float | None = 1.0
    accum_steps: int = 1  # contrastive gradient caching: effective batch = accum_steps x batch_size x processes
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class Config:
    run_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    heads: dict = field(default_factory=dict)  # name -> section; see vlp.heads.HEADS
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _as_float(value: Any) -> Any:
    """Ints, and strings such as '1e-3' that YAML 1.1 reads as text rather than a number, become floats."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    hint = annotation
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float:
        value = _as_float(value)
    expected = origin or hint
    if expected is Any or isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        if origin is list and args:
            return [_check_type(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
        return value
    raise ConfigError(f"config key '{where}' expects {getattr(hint, '__name__', hint)}, got {value!r}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}; valid keys: {', '.join(fields)}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key] = from_dict(hint_type, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(value, hint_type, f"{prefix}{key}")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. train.steps=100")
    key, raw = text.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({str(err).splitlines()[0]})") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if node.get(part) is None:  # absent, or an empty YAML section
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    return validate(from_dict(Config, apply_overrides(data, list(overrides))))


TRACKERS = ("tensorboard", "wandb")


def source_configs(value: Any, key: str = "data.train") -> list[SourceConfig]:
    """``data.train`` / ``data.val`` as sources: a path string, or a list of paths and source mappings."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(f"config key '{key}' lists no sources")
    sources = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]." if isinstance(value, list) else f"{key}."
        if isinstance(item, str):
            sources.append(SourceConfig(path=item))
        elif isinstance(item, dict):
            sources.append(from_dict(SourceConfig, item, where))
        else:
            raise ConfigError(f"config key '{key}' expects a path or a list of sources, got {item!r}")
        if sources[-1].weight <= 0:
            raise ConfigError(f"config key '{where}weight' must be positive, got {sources[-1].weight}")
    return sources


def validate(config: Config) -> Config:
    """Reject values that type-check but cannot work, naming the key."""
    at_least_one = {"train.steps": config.train.steps, "train.log_every": config.train.log_every,
                    "train.checkpoint_every": config.train.checkpoint_every,
                    "train.accum_steps": config.train.accum_steps, "data.batch_size": config.data.batch_size,
                    "data.val_samples": config.data.val_samples, "data.max_pixels": config.data.max_pixels,
                    "data.captions.max_per_image": config.data.captions.max_per_image,
                    "data.captions.max_chars": config.data.captions.max_chars}
    at_least_zero = {"train.eval_every": config.train.eval_every, "train.warmup_steps": config.train.warmup_steps,
                     "train.keep_checkpoints": config.train.keep_checkpoints,
                     "data.num_workers": config.data.num_workers, "data.shuffle_buffer": config.data.shuffle_buffer,
                     "data.views.global_crops": config.data.views.global_crops,
                     "data.views.local_crops": config.data.views.local_crops,
                     "data.views.mask_patch_size": config.data.views.mask_patch_size}
    for key, value in at_least_one.items():
        if value < 1:
            raise ConfigError(f"config key '{key}' must be at least 1, got {value}")
    for key, value in at_least_zero.items():
        if value < 0:
            raise ConfigError(f"config key '{key}' must be at least 0, got {value}")
    source_configs(config.data.train, "data.train")
    if config.data.val is not None:
        source_configs(config.data.val, "data.val")
    if config.data.captions.policy not in ("sample", "all"):
        raise ConfigError(f"unknown data.captions.policy '{config.data.captions.policy}'; valid: sample, all")
    if config.data.views.mask not in ("none", "random", "block"):
        raise ConfigError(f"unknown data.views.mask '{config.data.views.mask}'; valid: none, random, block")
    augment = config.data.augment
    for key, pair in (("data.augment.scale", augment.scale), ("data.augment.ratio", augment.ratio),
                      ("data.views.global_scale", config.data.views.global_scale),
                      ("data.views.local_scale", config.data.views.local_scale),
                      ("data.views.mask_ratio", config.data.views.mask_ratio)):
        if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
            raise ConfigError(f"config key '{key}' must be [low, high] with 0 < low <= high, got {pair}")
    unknown = [name for name in config.train.trackers if name not in TRACKERS]
    if unknown:
        raise ConfigError(f"unknown tracker(s) {unknown} in train.trackers; valid: {', '.join(TRACKERS)}")
    return config


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> None:
    from vlp.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
