"""One rank of the multi-process loss tests (tests/test_distributed.py), started once per rank as a real process.

Usage: ``python tests/_dist_worker.py RANK WORLD PORT TOKENIZER_DIR OUT_DIR``. Joins a gloo process group through a
real ``accelerate.Accelerator(cpu=True)``, which wraps the objective in torch DDP, and for every case of
``CASES`` takes this rank's slice of the shared global batch, runs ``accumulate_gradients`` (one pass, or
contrastive gradient caching over ``accum`` micro-batches) and saves the loss terms and the DDP-averaged
gradients of every parameter to ``OUT_DIR/{case}_rank{RANK}.pt``.
"""
from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 8
SEED = 0
# SigLIP's initial bias of -10 leaves a negative pair ~1e-4 of a positive pair's gradient, under the tests'
# tolerance; a bias near 0 makes the negatives (the other rank's, the other micro-batches') count.
SIGLIP = ("siglip_tiny.yaml", "model.init_logit_bias=-1.0")
MULTI_POSITIVE = ("tiny.yaml", "loss.type=clip_multi_positive")  # two captions per image, some padded
# name -> (config file and overrides, accum steps)
CASES = {
    "clip": (("tiny.yaml",), 1),
    "siglip": (SIGLIP, 1),
    "clip_accum2": (("tiny.yaml",), 2),
    "siglip_accum2": (SIGLIP, 2),
    "clip_multi_positive": (MULTI_POSITIVE, 1),
}


def build_objective(config_name: str, tokenizer_dir: str, *overrides: str):
    """The tiny dual encoder of ``configs/<config_name>`` (with ``overrides``) and the given tokenizer, wrapped in
    its objective and initialized from ``SEED``."""
    from vlp.config import load_config
    from vlp.losses import build_loss
    from vlp.models import build_model
    from vlp.objective import Objective

    cfg = load_config(REPO / "configs" / config_name, [f"model.tokenizer.path={tokenizer_dir}", *overrides])
    torch.manual_seed(SEED)
    model, tokenizer = build_model(cfg.model)
    multi = cfg.loss.type == "clip_multi_positive"
    return Objective(model, build_loss(cfg.loss), cfg.loss.weight, multi_caption=multi), tokenizer


@lru_cache(maxsize=1)
def captions() -> list[str]:
    from vlp.data import load_default

    return load_default("train").captions[:1000]


def global_batch(tokenizer, size: int = GLOBAL_BATCH, multi: bool = False) -> dict:
    """A fixed batch every process builds identically: random images, the first training captions (with
    ``multi``, a second caption for two images in three, as ``data.captions.policy=all`` gives)."""
    images = torch.randn(size, 3, 28, 28, generator=torch.Generator().manual_seed(1234))
    if not multi:
        return {"images": images, "tokens": tokenizer(captions()[:size])}
    tokens = torch.stack([tokenizer(captions()[:size]), tokenizer(captions()[500:500 + size])], dim=1)
    return {"images": images, "tokens": tokens, "caption_mask": torch.tensor([[True, i % 3 != 2] for i in range(size)])}


def split(batch: dict, parts: int) -> list[dict]:
    size = len(batch["tokens"]) // parts
    return [{key: value[i * size:(i + 1) * size] for key, value in batch.items()} for i in range(parts)]


def main(rank: int, world: int, port: int, tokenizer_dir: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    from accelerate import Accelerator

    from vlp.train.accumulation import accumulate_gradients

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == world and accelerator.process_index == rank
    for case, (config, accum) in CASES.items():
        objective, tokenizer = build_objective(config[0], tokenizer_dir, *config[1:])
        objective = accelerator.prepare(objective)
        assert isinstance(objective, torch.nn.parallel.DistributedDataParallel)
        share = split(global_batch(tokenizer, multi=config is MULTI_POSITIVE), world)[rank]
        terms = accumulate_gradients(objective, split(share, accum), accelerator)
        grads = {name: p.grad.clone() for name, p in accelerator.unwrap_model(objective).named_parameters()
                 if p.requires_grad}
        torch.save({"terms": terms, "grads": grads}, Path(out_dir) / f"{case}_rank{rank}.pt")
    accelerator.end_training()  # also destroys the process group


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
