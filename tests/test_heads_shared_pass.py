"""Heads that share the contrastive image pass (``shared_pass: true``): one tower pass feeds both the image-text
loss and the head, the loss sees the head's masked images, and gradient caching caches the same masked pass."""
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from vlp.config import ConfigError
from vlp.train.accumulation import accumulate_gradients

from test_heads import build, tokenizer_dir, views_batch  # noqa: F401  (tokenizer_dir is a fixture)

MAE = {"mode": "drop", "decoder_layers": 1, "decoder_width": 16, "decoder_heads": 2}
SHARED = {"mim_pixel_simmim": ("mim_pixel", {}), "mim_pixel_flip_mae": ("mim_pixel", MAE),
          "mim_feature": ("mim_feature", {})}


def count_tower_passes(objective, batch) -> tuple[dict, int]:
    """The objective's outputs and how many times the student's image tower ran."""
    passes = []
    hook = objective.model.visual.visual.conv1.register_forward_hook(lambda *_: passes.append(1))
    out = objective(batch)
    hook.remove()
    return out, len(passes)


@pytest.mark.parametrize("case", list(SHARED))
def test_a_shared_pass_runs_the_tower_once_and_the_loss_sees_the_masked_images(case, tokenizer_dir):
    name, options = SHARED[case]
    separate, tokenizer = build(tokenizer_dir, {name: options})
    shared, _ = build(tokenizer_dir, {name: {**options, "shared_pass": True}})
    batch = views_batch(tokenizer)
    out_separate, passes_separate = count_tower_passes(separate, batch)
    out_shared, passes_shared = count_tower_passes(shared, batch)
    assert (passes_separate, passes_shared) == (2, 1)  # student passes: a teacher is a copy of the tower
    torch.testing.assert_close(out_shared[name], out_separate[name])  # same weights, same masked pass
    assert not torch.allclose(out_shared["contrastive"], out_separate["contrastive"])
    head = shared.heads[name]
    masked = head.encode_images(batch, shared.model)["pooled"]
    outputs, _ = shared.encode(batch)
    torch.testing.assert_close(outputs["image_features"], F.normalize(masked, dim=-1))


@pytest.mark.parametrize("case", list(SHARED))
def test_a_shared_pass_trains_the_tower_and_every_head_parameter(case, tokenizer_dir):
    name, options = SHARED[case]
    objective, tokenizer = build(tokenizer_dir, {name: {**options, "shared_pass": True}})
    objective(views_batch(tokenizer))["loss"].backward()
    for param_name, param in [*objective.heads[name].named_parameters(), *objective.model.visual.named_parameters()]:
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, param_name


@pytest.fixture
def accelerator():
    """A real single-process Accelerator on CPU; the shared Accelerate state is reset around it."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)


def test_gradient_caching_caches_the_shared_masked_pass(tokenizer_dir, accelerator):
    """Two cached micro-batches give the one-pass gradient: the cache holds the masked pass's features."""
    objective, tokenizer = build(tokenizer_dir, {"mim_pixel": {**MAE, "shared_pass": True}})
    batch = views_batch(tokenizer)
    whole = accumulate_gradients(objective, [batch], accelerator)
    grads = {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}
    objective.zero_grad()
    halves = [{key: value[i::2] for key, value in batch.items()} for i in range(2)]
    cached = accumulate_gradients(objective, halves, accelerator)
    torch.testing.assert_close(cached["contrastive"], whole["contrastive"])
    for name, grad in grads.items():
        if not name.startswith("heads."):  # the head's loss is a per-micro-batch mean
            torch.testing.assert_close(dict(objective.named_parameters())[name].grad, grad, atol=2e-6, rtol=1e-4)


def test_two_heads_cannot_both_run_the_image_pass(tokenizer_dir):
    with pytest.raises(ConfigError, match="only one head can run the contrastive image pass"):
        build(tokenizer_dir, {"mim_pixel": {"shared_pass": True}, "mim_feature": {"shared_pass": True}})
