"""The token-level path of timm ViT towers (``TimmTower.forward_tokens``), checked against timm's own forward, and
the image-tower heads training on it."""
import pytest
import torch

from vlp.config import ConfigError, ImageTowerConfig
from vlp.data.masks import MASKS
from vlp.models.image_towers import TimmTower

from test_heads import build, tokenizer_dir, views_batch  # noqa: F401  (tokenizer_dir is a fixture)

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 7}  # a 4 x 4 grid on 28-pixel images
TIMM_VIT = ("model.image.type=timm", "model.image.name=vit_tiny_patch16_224",
            "model.image.kwargs={embed_dim: 32, depth: 2, num_heads: 2, patch_size: 7}")
VARIANTS = {
    "class_token_avg_pool": ("vit_tiny_patch16_224", "avg", {}),
    "class_token_pool": ("vit_tiny_patch16_224", "token", {}),
    "no_class_token": ("vit_tiny_patch16_224", "avg", {"class_token": False, "global_pool": "avg"}),
    "registers": ("vit_tiny_patch16_224", "token", {"reg_tokens": 2}),
    "registers_no_embed_class": ("vit_tiny_patch16_224", "token", {"reg_tokens": 2, "no_embed_class": True}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", "", {}),
}
HEAD_CASES = {
    "mim_pixel_mask_token": {"mim_pixel": {}},
    "mim_pixel_drop": {"mim_pixel": {"mode": "drop", "decoder_layers": 1, "decoder_width": 16, "decoder_heads": 2}},
    "mim_feature_ema": {"mim_feature": {}},
    "self_distill_ibot_local_crops": {"self_distill": {"prototypes": 64, "hidden_dim": 32, "bottleneck_dim": 16,
                                                       "ibot": True}},
}
BATCH = 4


def timm_tower(name="vit_tiny_patch16_224", pool="avg", patch_dropout=0.0, **kwargs) -> TimmTower:
    torch.manual_seed(0)
    cfg = ImageTowerConfig(type="timm", name=name, image_size=28, pool=pool, patch_dropout=patch_dropout,
                           kwargs={**TINY_VIT, **kwargs})
    return TimmTower(cfg, embed_dim=16).eval()


def images(size=28, count=BATCH) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pooled_and_patch_tokens_are_timms_own_forward(variant):
    name, pool, kwargs = VARIANTS[variant]
    tower = timm_tower(name, pool, **kwargs)
    assert tower.tokens_unsupported is None
    x = images()
    with torch.no_grad():
        out = tower.forward_tokens(x)
        features = tower.trunk.forward_features(x)
        assert torch.allclose(out["pooled"], tower(x), atol=1e-5)
        assert torch.allclose(out["patch_tokens"], features[:, tower.trunk.num_prefix_tokens:], atol=1e-5)
    assert out["global"].shape == (BATCH, 32) and out["patch_tokens"].shape == (BATCH, 16, 32)


def test_a_mask_replaces_the_masked_patch_embeddings_by_the_mask_token():
    tower, x = timm_tower(), images()
    mask = MASKS.get("block")(4, [0.5, 0.5])(torch.Generator().manual_seed(0)).expand(BATCH, 4, 4)
    token = torch.randn(32, generator=torch.Generator().manual_seed(2))
    swap = tower.trunk.patch_embed.proj.register_forward_hook(
        lambda module, args, out: torch.where(mask[:, None], token[None, :, None, None], out))
    with torch.no_grad():
        pooled, patch_tokens = tower(x), tower.trunk.forward_features(x)[:, 1:]
        swap.remove()
        masked = tower.forward_tokens(x, mask, token)
        unmasked = tower.forward_tokens(x)
    assert torch.allclose(masked["pooled"], pooled, atol=1e-5)
    assert torch.allclose(masked["patch_tokens"], patch_tokens, atol=1e-5)
    assert not torch.allclose(masked["pooled"], unmasked["pooled"], atol=1e-3)


def test_keep_runs_on_the_kept_patches_only_as_timms_patch_dropout_does():
    tower, x = timm_tower(patch_dropout=0.5), images()
    tower.trunk.patch_drop.train()  # the reference: timm drops half the patches after adding positions
    with torch.no_grad():
        torch.manual_seed(3)
        expected = tower(x)
        torch.manual_seed(3)
        keep = torch.argsort(torch.randn(BATCH, 16), dim=-1)[:, :8]
        out = tower.forward_tokens(x, keep=keep)
    assert out["patch_tokens"].shape == (BATCH, 8, 32)
    assert torch.allclose(out["pooled"], expected, atol=1e-5)


def test_local_crops_get_positions_resampled_as_timms_dynamic_img_size_does():
    fixed, dynamic = timm_tower(pool="token"), timm_tower(pool="token", dynamic_img_size=True)
    dynamic.load_state_dict(fixed.state_dict())
    crops = images(size=14)
    with torch.no_grad():
        out = fixed.forward_tokens(crops)
        assert torch.allclose(out["pooled"], dynamic(crops), atol=1e-5)
        assert torch.allclose(dynamic.forward_tokens(crops)["pooled"], dynamic(crops), atol=1e-5)
    assert out["patch_tokens"].shape == (BATCH, 4, 32)


def trunk_grads(objective, batch) -> dict:
    out = objective(batch)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    return {n: p.grad.clone() for n, p in objective.model.visual.trunk.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", list(HEAD_CASES))
def test_a_token_head_trains_a_timm_vit_tower_and_its_own_parameters(case, tokenizer_dir):
    plain, tokenizer = build(tokenizer_dir, {}, *TIMM_VIT)
    batch = views_batch(tokenizer)
    plain_grads = trunk_grads(plain, batch)
    objective, _ = build(tokenizer_dir, HEAD_CASES[case], *TIMM_VIT)
    grads = trunk_grads(objective, batch)
    assert max((grads[n] - plain_grads[n]).abs().max().item() for n in plain_grads) > 1e-6
    for early in ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight"):
        assert grads[early].abs().sum() > 0
    (head,) = objective.heads.values()
    for param_name, param in head.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{case}: {param_name} got no gradient"


@pytest.mark.parametrize("name, kwargs, reason", [
    ("test_resnet", "{}", r"'test_resnet' \(ResNet\), which is not a timm VisionTransformer"),
    ("eva02_tiny_patch14_224", "{embed_dim: 32, depth: 1, num_heads: 2, patch_size: 7}",
     r"\(Eva\), which is not a timm VisionTransformer"),
    ("vit_tiny_patch16_224", "{embed_dim: 32, depth: 1, num_heads: 2, patch_size: 7, pos_embed: none}",
     r"\(VisionTransformer\), which has no absolute positional embeddings")])
def test_a_timm_tower_without_the_token_path_is_a_config_error_naming_the_head(name, kwargs, reason, tokenizer_dir):
    with pytest.raises(ConfigError, match=rf"^heads\.mim_pixel needs a ViT image tower .*got TimmTower .*{reason}"):
        build(tokenizer_dir, {"mim_pixel": {}}, "model.image.type=timm", f"model.image.name={name}",
              f"model.image.kwargs={kwargs}")
