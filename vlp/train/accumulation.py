"""One optimizer step's gradients: a single pass, or contrastive gradient caching over micro-batches.

Gradient caching (GradCache, Gao et al. 2021; OpenCLIP ``--accum-freq``): embed every micro-batch without
gradients, then re-embed each one with gradients and backpropagate the loss over the whole cached batch.
Every sample is a negative for every other, which plain gradient accumulation (smaller negative sets) is not.
The RNG state of each micro-batch's first pass is replayed in its second, so dropout and patch dropout match.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from vlp.objective import FEATURE_KEYS, FeatureCache


class RngState:
    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)


def accumulate_gradients(objective, micro_batches: list[dict], accelerator) -> dict[str, torch.Tensor]:
    """Backpropagate one step's loss; return its detached terms (mean over passes) with the total as 'loss'."""
    if len(micro_batches) == 1:
        out = objective(micro_batches[0])
        accelerator.backward(out["loss"])
        return {name: value.detach() for name, value in out.items()}

    encode = accelerator.unwrap_model(objective).encode
    states, cached = [], []
    with torch.no_grad(), accelerator.autocast():
        for batch in micro_batches:
            states.append(RngState())
            cached.append(encode(batch)[0])
    features = {key: torch.cat([out[key] for out in cached]) for key in FEATURE_KEYS}

    sums: dict[str, torch.Tensor] = {}
    for index, (batch, state) in enumerate(zip(micro_batches, states)):
        state.restore()
        last = index == len(micro_batches) - 1
        with nullcontext() if last else accelerator.no_sync(objective):
            cache = FeatureCache(features, index, len(batch["tokens"]), len(micro_batches))
            out = objective(batch, cache=cache)
            accelerator.backward(out["loss"])
        for name, value in out.items():
            if name != "loss":
                sums[name] = sums.get(name, 0) + value.detach()
    terms = {name: total / len(micro_batches) for name, total in sums.items()}
    return {"loss": sum(terms.values()), **terms}
