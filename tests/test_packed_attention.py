"""vlp's OpenCLIP ViT tower runs self-attention through PackedSelfAttention: same parameters, same outputs."""
import copy

import pytest
import torch
from torch import nn

from vlp.models.image_towers import PackedSelfAttention, _pack_self_attention


def _vision_tower(**kwargs):
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    torch.manual_seed(0)
    cfg = dict(width=32, layers=2, head_width=16, patch_size=7, image_size=28, mlp_ratio=2.0, **kwargs)
    return _build_vision_tower(16, CLIPVisionCfg(**cfg))


@pytest.mark.parametrize("kwargs", [{}, {"ls_init_value": 0.1}])
def test_same_outputs_gradients_and_state_dict(kwargs):
    reference = _vision_tower(**kwargs)
    packed = copy.deepcopy(reference)
    _pack_self_attention(packed)
    assert sum(isinstance(m, PackedSelfAttention) for m in packed.modules()) == 2
    assert not any(isinstance(m, nn.MultiheadAttention) for m in packed.transformer.modules())
    assert list(packed.state_dict()) == list(reference.state_dict())

    images = torch.randn(4, 3, 28, 28)
    out_ref, out_packed = reference(images), packed(images)
    torch.testing.assert_close(out_packed, out_ref)
    grads_ref = torch.autograd.grad(out_ref.square().sum(), list(reference.parameters()))
    grads_packed = torch.autograd.grad(out_packed.square().sum(), list(packed.parameters()))
    for a, b in zip(grads_packed, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask_kind", ["bool", "float", "float3d"])
def test_attention_masks_follow_multihead_attention(mask_kind):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    packed = PackedSelfAttention(mha)
    x = torch.randn(2, 5, 32)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    if mask_kind != "bool":
        mask = torch.zeros(5, 5).masked_fill(mask, float("-inf"))
    if mask_kind == "float3d":
        mask = mask.expand(2 * 4, 5, 5)
    expected = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
    torch.testing.assert_close(packed(x, x, x, attn_mask=mask)[0], expected)


def test_vlp_tower_is_packed_and_loads_open_clip_weights(tiny):
    from vlp.models.image_towers import OpenClipViTTower

    cfg = tiny()
    tower = OpenClipViTTower(cfg.model.image, cfg.model.embed_dim)
    assert any(isinstance(m, PackedSelfAttention) for m in tower.modules())
    state = tower.visual.state_dict()
    unpacked = copy.deepcopy(tower.visual)
    for block in unpacked.transformer.resblocks:  # put a real MHA back, with the same weights
        mha = nn.MultiheadAttention(block.attn.in_proj_weight.shape[1], block.attn.num_heads, batch_first=True)
        block.attn = mha
    unpacked.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(tower(images), unpacked(images))
