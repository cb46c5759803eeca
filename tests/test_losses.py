"""The loss math, single process: each loss against its paper's formula written out independently here, known
values for identical and orthogonal features, and the errors a misconfigured loss raises."""
import math

import pytest
import torch
import torch.nn.functional as F

from vlp.config import ConfigError, LossConfig
from vlp.data import load_default
from vlp.losses import ClipLoss, SigLipLoss, build_loss
from vlp.models import build_model
from vlp.models.tokenizers import train_sentencepiece
from vlp.objective import Objective

from conftest import tiny_config


def features(n: int, dim: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (x / x.norm(dim=1, keepdim=True)).requires_grad_()


def clip_paper_loss(images, texts, scale):
    """CLIP (Radford et al. 2021, Fig. 3): logits = t * I_e @ T_e.T; the mean of the cross-entropies over the rows
    (each image against all texts) and the columns (each text against all images), true pairs on the diagonal."""
    logits = scale * images @ texts.T
    n = len(logits)
    per_image = [torch.log(torch.exp(logits[i]).sum()) - logits[i, i] for i in range(n)]
    per_text = [torch.log(torch.exp(logits[:, j]).sum()) - logits[j, j] for j in range(n)]
    return (sum(per_image) / n + sum(per_text) / n) / 2


def siglip_paper_loss(images, texts, scale, bias):
    """SigLIP (Zhai et al. 2023, Alg. 1): -1/n sum_ij log sigmoid(z_ij (t x_i.y_j + b)), z_ij = 1 iff i = j else -1."""
    n = len(images)
    total = 0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total = total - torch.log(1 / (1 + torch.exp(-z * (scale * images[i] @ texts[j] + bias))))
    return total / n


def grads(value, *inputs):
    return torch.autograd.grad(value, inputs)


def test_clip_loss_equals_the_paper_formula():
    images, texts = features(6, 5, 0), features(6, 5, 1)
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    ours = ClipLoss()(image_features=images, text_features=texts, logit_scale=scale)["contrastive"]
    paper = clip_paper_loss(images, texts, scale)
    assert ours.item() == pytest.approx(paper.item(), abs=1e-12)
    for got, want in zip(grads(ours, images, texts, scale), grads(paper, images, texts, scale)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_siglip_loss_equals_the_paper_formula():
    images, texts = features(5, 4, 2), features(5, 4, 3)
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    ours = SigLipLoss()(image_features=images, text_features=texts, logit_scale=scale, logit_bias=bias)["sigmoid"]
    paper = siglip_paper_loss(images, texts, scale, bias)
    assert ours.item() == pytest.approx(paper.item(), abs=1e-12)
    for got, want in zip(grads(ours, images, texts, scale, bias), grads(paper, images, texts, scale, bias)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 10.0, 100.0])
def test_clip_loss_known_values(scale):
    n, t = 4, torch.tensor(scale)
    same = F.normalize(torch.ones(n, 8), dim=1)  # every logit equal: chance, log n
    assert ClipLoss()(same, same, t)["contrastive"].item() == pytest.approx(math.log(n), rel=1e-6)
    eye = torch.eye(n)  # true pairs identical, all others orthogonal: -log(e^t / (e^t + n - 1))
    assert ClipLoss()(eye, eye, t)["contrastive"].item() == pytest.approx(math.log1p((n - 1) * math.exp(-scale)),
                                                                            rel=1e-5, abs=1e-7)


def test_siglip_loss_known_values():
    n = 4
    eye, other = torch.eye(2 * n)[:n], torch.eye(2 * n)[n:]
    t, b = torch.tensor(10.0), torch.tensor(-10.0)  # SigLIP's initialization
    # true pairs identical (logit t + b = 0), the rest orthogonal (logit b): log 2 + (n - 1) log(1 + e^b)
    assert SigLipLoss()(eye, eye, t, b)["sigmoid"].item() == pytest.approx(
        math.log(2) + (n - 1) * math.log1p(math.exp(-10.0)), rel=1e-6)
    # everything orthogonal with no bias: every logit 0, n^2 log 2 over n images
    assert SigLipLoss()(eye, other, t, torch.tensor(0.0))["sigmoid"].item() == pytest.approx(n * math.log(2),
                                                                                           rel=1e-6)


@pytest.mark.parametrize("loss", [ClipLoss(), SigLipLoss()], ids=["clip", "siglip"])
def test_losses_ignore_the_order_of_the_pairs(loss):
    """Ranks concatenate their slices in rank order, which need not be the single process's sample order: the loss
    must depend on the set of pairs only. And image/text swapped gives the same value (both losses symmetric)."""
    images, texts = features(6, 5, 4).detach(), features(6, 5, 5).detach()
    scale, bias = torch.tensor(5.0, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)
    value = loss(images, texts, scale, logit_bias=bias)
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    shuffled = loss(images[order], texts[order], scale, logit_bias=bias)
    swapped = loss(texts, images, scale, logit_bias=bias)
    mismatched = loss(images, texts[order], scale, logit_bias=bias)
    for name in value:
        assert shuffled[name].item() == pytest.approx(value[name].item(), abs=1e-12)
        assert swapped[name].item() == pytest.approx(value[name].item(), abs=1e-12)
        assert mismatched[name].item() != pytest.approx(value[name].item(), abs=1e-3)


def test_sigmoid_loss_without_a_logit_bias_raises_config_error():
    x = F.normalize(torch.randn(3, 4), dim=1)
    with pytest.raises(ConfigError, match="init_logit_bias"):
        SigLipLoss()(image_features=x, text_features=x, logit_scale=torch.tensor(10.0))


def test_tiny_config_with_the_sigmoid_loss_and_no_bias_raises_config_error(tmp_path):
    """configs/tiny.yaml has no logit bias: switching only its loss to siglip fails with a ConfigError."""
    tokenizer_dir = train_sentencepiece(load_default("train").captions[:200], 64, tmp_path / "tokenizer")
    cfg = tiny_config(tmp_path, "loss.type=siglip", f"model.tokenizer.path={tokenizer_dir}")
    model, _ = build_model(cfg.model)
    with pytest.raises(ConfigError, match="init_logit_bias"):  # when the objective is built, before step 1
        Objective(model, build_loss(cfg.loss))


def test_unknown_loss_type_raises_config_error():
    with pytest.raises(ConfigError, match="siglip"):  # the message lists the valid types
        build_loss(LossConfig(type="infonce"))


def test_multi_positive_loss_reduces_to_clip_with_one_caption_and_ignores_padding():
    from vlp.losses import ClipLoss, MultiPositiveClipLoss

    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    clip = ClipLoss()(images, texts, scale)["contrastive"]
    single = MultiPositiveClipLoss()(images, texts, scale, text_valid=torch.ones(6, dtype=torch.bool))
    padded = torch.stack([texts, torch.randn(6, 8)], 1).flatten(0, 1)
    mask = torch.tensor([[True, False]] * 6).flatten()
    assert single["contrastive"].item() == pytest.approx(clip.item(), abs=1e-6)
    assert MultiPositiveClipLoss()(images, padded, scale, text_valid=mask)["contrastive"].item() == pytest.approx(
        clip.item(), abs=1e-6)
    # a second true caption that matches its image lowers the loss
    both = torch.stack([texts, images], 1).flatten(0, 1)
    better = MultiPositiveClipLoss()(images, both, scale, text_valid=torch.ones(12, dtype=torch.bool))
    assert better["contrastive"].item() < clip.item()


def test_all_captions_policy_trains_with_the_multi_positive_loss_only(tiny, tmp_path):
    from datagen import good_shards
    from vlp.config import ConfigError
    from vlp.train.loop import train

    spec = good_shards(tmp_path / "shards", 1, 12)
    common = [f"data.train=[{{path: '{spec}', caption_fields: [txt, json.recaption]}}]", "data.val=null",
              "data.captions.policy=all", "data.captions.max_per_image=2", "train.steps=2", "data.batch_size=4"]
    with pytest.raises(ConfigError, match="use loss.type=clip_multi_positive"):
        train(tiny(*common))
    train(tiny(*common, "loss.type=clip_multi_positive", f"run_dir={tmp_path / 'multi'}"))
    assert (tmp_path / "multi" / "checkpoints" / "step_0000002").is_dir()
