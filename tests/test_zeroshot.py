"""Zero-shot classification: prompt-ensembled classifiers equal OpenCLIP's, and ``LoadedModel.classify``."""
import open_clip
import pytest
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

import vlp
from vlp.data import load_default
from vlp.export.open_clip import export_open_clip
from vlp.zeroshot import build_classifier, resolve_templates, template_set


LABELS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return vlp.load(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def val_images():
    data = load_default("val")
    return [data.pil(i) for i in range(200)], torch.as_tensor(data.labels[:200])


def test_template_sets_are_open_clips():
    assert len(template_set("openai_imagenet")) == len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert resolve_templates("simple") == tuple(SIMPLE_IMAGENET_TEMPLATES)
    assert resolve_templates(None) == tuple(OPENAI_IMAGENET_TEMPLATES)
    assert resolve_templates("a {} photo") == ("a {} photo",)
    with pytest.raises(ValueError, match="no '{}'"):
        resolve_templates(["a photo"])


@pytest.mark.parametrize("templates", ["openai_imagenet", "simple", ["a photo of a {}.", "a {} made of cloth."]])
def test_classifier_and_top1_equal_open_clips_on_an_exported_model(tiny_run, loaded, val_images, tmp_path, templates):
    out = export_open_clip(tiny_run, tmp_path / "exported")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    model.eval()
    resolved = list(resolve_templates(templates))
    reference = build_zero_shot_classifier(model, tokenizer, LABELS, resolved, num_classes_per_batch=3, device="cpu")
    ours = loaded.zero_shot_classifier(LABELS, templates).weights
    diff = (ours - reference.T).abs().max().item()
    images, targets = val_images
    with torch.no_grad():
        pixels = torch.stack([preprocess(img) for img in images])
        reference_logits = model.encode_image(pixels, normalize=True) @ reference
    ours_top1 = torch.tensor([LABELS.index(top[0][0]) for top in loaded.classify(images, LABELS, templates, top_k=1)])
    reference_top1 = reference_logits.argmax(1)
    accuracy = (ours_top1 == targets).float().mean().item()
    print(f"templates={templates if isinstance(templates, str) else len(templates)}: max abs weight diff {diff:.2e}, "
          f"top-1 {accuracy:.3f} vs OpenCLIP {(reference_top1 == targets).float().mean().item():.3f}")
    assert diff < 1e-5, diff
    assert torch.equal(ours_top1, reference_top1)


def test_classify_accepts_pil_path_tensor_batch_and_list(loaded, val_images, tmp_path):
    images = val_images[0][:3]
    path = tmp_path / "image.png"
    images[0].save(path)
    batch = torch.stack([loaded.preprocess(img) for img in images])
    expected = loaded.classify(images, LABELS, "simple", top_k=3)
    assert len(expected) == 3
    for top in expected:
        probabilities = [p for _, p in top]
        assert len(top) == 3 and probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
        assert {label for label, _ in top} <= set(LABELS)
    for single in (images[0], path, str(path), batch[0]):
        assert_same(loaded.classify(single, LABELS, "simple", top_k=3), expected[:1])
    assert_same(loaded.classify(batch, LABELS, "simple", top_k=3), expected)
    assert_same(loaded.classify([path, images[1], batch[2:]], LABELS, "simple", top_k=3), expected)
    assert len(loaded.classify(images[0], LABELS, "simple", top_k=50)[0]) == len(LABELS)
    assert loaded.embed_images(batch).shape == loaded.embed_images(images).shape == (3, loaded.config.model.embed_dim)


def assert_same(got, expected):
    assert [[label for label, _ in top] for top in got] == [[label for label, _ in top] for top in expected]
    assert torch.allclose(torch.tensor([[p for _, p in top] for top in got]),
                          torch.tensor([[p for _, p in top] for top in expected]), atol=1e-5)


def test_a_second_classify_with_the_same_labels_encodes_no_text(tiny_run, val_images, monkeypatch):
    loaded = vlp.load(tiny_run, device="cpu")
    calls = []
    encode_text = loaded.model.encode_text
    monkeypatch.setattr(loaded.model, "encode_text", lambda *a, **k: calls.append(1) or encode_text(*a, **k))
    first = loaded.classify(val_images[0][:4], LABELS, "simple")
    encoded = len(calls)
    assert encoded > 0
    second = loaded.classify(val_images[0][4:8], ", ".join(LABELS), list(SIMPLE_IMAGENET_TEMPLATES))
    assert len(calls) == encoded and len(first) == len(second) == 4
    loaded.classify(val_images[0][:1], LABELS[:3], "simple")
    assert len(calls) > encoded  # new labels are encoded


def test_autoclip_reweights_templates_and_reduces_to_ensembling_for_one_template(loaded, val_images):
    images = val_images[0][:16]
    features = loaded.embed_images(images)
    scale = loaded.model.scale().item()
    many = loaded.zero_shot_classifier(LABELS, "openai_imagenet")
    plain, auto = many.logits(features, scale), many.logits(features, scale, autoclip=True)
    assert plain.shape == auto.shape == (16, len(LABELS))
    assert not torch.allclose(plain.softmax(-1), auto.softmax(-1), atol=1e-6)
    one = loaded.zero_shot_classifier(LABELS, ["a photo of a {}."])
    assert torch.allclose(one.logits(features, scale), one.logits(features, scale, autoclip=True), atol=1e-6)
    top = loaded.classify(images, LABELS, top_k=3, autoclip=True)
    assert len(top) == 16 and all(len(t) == 3 for t in top)


def test_callable_templates_equal_format_strings(loaded):
    def encode(texts):
        return loaded.embed_texts(texts)

    by_string = build_classifier(encode, LABELS, ["a photo of a {}.", "a {}."]).weights
    by_callable = build_classifier(encode, LABELS, [lambda c: f"a photo of a {c}.", lambda c: f"a {c}."]).weights
    assert torch.allclose(by_string, by_callable, atol=1e-6)
