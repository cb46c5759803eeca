"""What the text-generating steps (``recaption``, ``rewrite_llm``) share: the ``generate`` options, checked naming
the key; loading a local HF model directory (nothing is downloaded); and sampling seeded per batch, so that a run
writes the same captions in every process and every run."""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample


@dataclass
class GenerationOptions:
    model: str | None = None  # a local HF model directory (each step says which kind)
    max_new_tokens: int = 30
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0  # with do_sample
    top_p: float = 0.9  # with do_sample
    seed: int = 0
    batch_size: int = 16
    device: str | None = None  # e.g. cuda:1; None: cuda when there is one, else cpu


def model_directory(path: str | None, kind: str) -> str:
    """``path`` checked to be a local directory (nothing is downloaded)."""
    if path is None:
        raise ConfigError(f"config key 'model' is not set: give a local directory holding {kind}")
    if not Path(path).is_dir():
        raise ConfigError(f"config key 'model': no such directory: {path}")
    return path


def check_generation(config, count_key: str) -> None:
    """Reject generation options ``generate`` would refuse or ignore, naming the key."""
    count = getattr(config, count_key)
    for key in ("max_new_tokens", "num_beams", count_key):
        if getattr(config, key) < 1:
            raise ConfigError(f"config key '{key}' must be at least 1, got {getattr(config, key)}")
    if config.temperature <= 0 or not 0 < config.top_p <= 1:
        raise ConfigError(f"config keys 'temperature' (> 0) and 'top_p' (in (0, 1]) got {config.temperature} and "
                          f"{config.top_p}")
    if count > config.num_beams and not config.do_sample:
        raise ConfigError(f"config key '{count_key}' is {count}: more than one output per input needs "
                          f"do_sample: true, or num_beams: {count} or more")


def generation_kwargs(config, count: int) -> dict:
    kwargs = {"max_new_tokens": config.max_new_tokens, "num_beams": config.num_beams, "do_sample": config.do_sample,
              "num_return_sequences": count}
    if config.do_sample:  # set only when used: generate warns about sampling options it ignores
        kwargs.update(temperature=config.temperature, top_p=config.top_p)
    return kwargs


@contextlib.contextmanager
def seeded(seed: int, samples: list[Sample]):
    """Torch's random state seeded from ``seed`` and the batch's keys, restored afterwards: a batch samples the same
    outputs in every run and process (the batches themselves are the same in every run)."""
    import torch

    digest = hashlib.sha256("\n".join([str(seed), *(sample.key for sample in samples)]).encode()).digest()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(int.from_bytes(digest[:8], "little"))
        yield


@contextlib.contextmanager
def loading(step_name: str):
    """A model that cannot be loaded is found on first use, during the run: its error names the step, as the errors
    found when the recipe is loaded do."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"recipe step '{step_name}': {err}") from None


def check_model_type(path: str, known_types, kind: str) -> None:
    """Fail, naming the key, unless ``path`` holds a model type transformers loads as ``kind``. Checked by name
    before loading: transformers' own error lists every model type it knows, on one line."""
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"config key 'model': {path} holds no model transformers can load: "
                          f"{str(err).splitlines()[0]}") from None
    if model_type not in known_types:
        raise ConfigError(f"config key 'model': {path} holds a '{model_type}' model, not {kind}")


def device_for(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def distinct_texts(texts: list[str]) -> list[str]:
    """Whitespace-normalized, empty ones and repeats left out, in order."""
    return list(dict.fromkeys(text for text in (" ".join(t.split()) for t in texts) if text))
