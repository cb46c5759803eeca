"""Checkpoints: weights in safetensors, optimizer/scheduler/RNG as tensors loadable with ``weights_only=True``.

A checkpoint is a directory ``RUN_DIR/checkpoints/step_NNNNNNN``, written under a temporary name and renamed
into place once complete, so a crash mid-write never leaves a directory that gets loaded. It holds the config
and the tokenizer too, so it can be loaded on its own.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from vlp.config import ConfigError, save_config
from vlp.models.weights import load_into, load_state_dict_file
from vlp.utils import atomic_write_text, fsync_dir, fsync_tree

STEP_DIR = re.compile(r"^step_(\d{7,})$")
WEIGHTS = "model.safetensors"
STATE = "state.json"


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir, "checkpoints")
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its newest complete checkpoint)."""
    path = Path(path)
    if (path / WEIGHTS).is_file() and (path / STATE).is_file():
        return path
    if not path.exists():
        raise ConfigError(f"no such run or checkpoint: {path}")
    found = latest_checkpoint(path)
    if found is None:
        raise ConfigError(f"{path} holds no complete checkpoint (expected checkpoints/step_*/{STATE})")
    return found


def _rng_state() -> dict:
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
             "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_cached": float(cached),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _contiguous_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_checkpoint(run_dir: Path, step: int, accelerator, objective, optimizer, scheduler, data_state: dict,
                    config, tokenizer, keep: int) -> Path:
    """Every process calls this (it synchronizes); the main process writes the shared files."""
    root = run_dir / "checkpoints"
    final = root / f"step_{step:07d}"
    staging = root / f".staging_step_{step:07d}"
    weights = accelerator.get_state_dict(objective)
    if accelerator.is_main_process:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), staging / f"rng_rank{accelerator.process_index}.pt")
    atomic_write_text(staging / f"data_rank{accelerator.process_index}.json", json.dumps(data_state))
    if accelerator.is_main_process:
        save_file(_contiguous_copy(weights), str(staging / WEIGHTS))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        save_config(config, staging / "config.yaml")
        if tokenizer.path:  # HF and trained tokenizers travel with the checkpoint
            tokenizer.save_pretrained(staging / "tokenizer")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "stream_position": data_state["batches"], "world_size": accelerator.num_processes}
        fsync_tree(staging)
        atomic_write_text(staging / STATE, json.dumps(state))
        fsync_dir(staging)
        if final.exists():  # a re-run that reached the same step: the new copy is complete, swap it in
            shutil.rmtree(final)
        staging.rename(final)
        fsync_dir(root)
        for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_weights(path: Path, module: torch.nn.Module, prefix: str = "") -> None:
    """Load ``model.safetensors`` (keys under ``prefix``) into ``module``; incompatible shapes fail in one line."""
    state = load_state_dict_file(path / WEIGHTS)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    expected = module.state_dict()
    for key in (k for k in state if k.endswith("text.token_embedding.weight") and k in expected):
        if state[key].shape[0] != expected[key].shape[0]:
            raise ConfigError(f"checkpoint {path} was trained with a {state[key].shape[0]}-token vocabulary, the "
                              f"tokenizer has {expected[key].shape[0]}: tokenizer and text tower do not match")
    load_into(module, state, path)


def load_checkpoint(path: Path, accelerator, objective, optimizer, scheduler) -> dict:
    """Restore a checkpoint saved by ``save_checkpoint``; returns its ``state.json``."""
    state = json.loads((path / STATE).read_text())
    if state["world_size"] != accelerator.num_processes:
        raise ConfigError(f"checkpoint {path} was written by {state['world_size']} processes, this run has "
                          f"{accelerator.num_processes}; the data stream position would not carry over")
    load_weights(path, accelerator.unwrap_model(objective))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    _set_rng_state(torch.load(path / f"rng_rank{accelerator.process_index}.pt", weights_only=True))
    state["data"] = json.loads((path / f"data_rank{accelerator.process_index}.json").read_text())
    return state
