"""Reading weight files safely: safetensors, or ``torch.load(weights_only=True)``; never arbitrary unpickling."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from vlp.config import ConfigError


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file not found: {path}")
    state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    odd = next((k for k, v in state.items() if not torch.is_tensor(v)), None)
    if odd is not None:
        raise ConfigError(f"weights file {path} is not a state dict of tensors: '{odd}' holds a "
                          f"{type(state[odd]).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ConfigError(f"weights file {path} is not a valid safetensors file: {err}") from None


def _read_torch(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is several paragraphs; its WeightsUnpickler line names what was refused
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", str(err), re.DOTALL)
        detail = " ".join(found.group(1).split()) if found else _first_line(err)
        raise ConfigError(f"refusing to read weights file {path}: it is not a plain tensor checkpoint "
                          f"(torch.load weights_only=True: {detail}); save weights with safetensors") from None
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file fails in many ways; each becomes one line
        raise ConfigError(f"cannot read weights file {path}: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    return next(iter(str(err).splitlines()), "") or type(err).__name__


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``module.load_state_dict(state)``, with a one-line error naming the first missing, unexpected or
    misshapen tensor."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = (f"'{wrong[0]}' has shape {tuple(state[wrong[0]].shape)}, the model {tuple(expected[wrong[0]].shape)}"
                  if wrong else f"{len(missing)} tensors missing, e.g. {missing[:3]}" if missing
                  else f"{len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}")
        raise ConfigError(f"weights {source} do not fit {type(module).__name__}: {detail}")
    module.load_state_dict(state)
