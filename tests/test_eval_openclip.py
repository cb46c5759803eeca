"""``vlp eval`` agrees with OpenCLIP's own evaluation code on the model exported to OpenCLIP.

The same 300 held-out images (resized to a non-square shape, so resize and center crop both do work) are
evaluated twice: by ``vlp eval`` on the vlp run, and by ``open_clip.build_zero_shot_classifier`` +
``open_clip_train.zero_shot.run`` (top-1/top-5) and ``open_clip_train.train.get_clip_metrics`` (retrieval) on
the exported ``local-dir:`` model, with OpenCLIP's preprocess and tokenizer.
"""
import io
import json
from types import SimpleNamespace

import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from open_clip_train import zero_shot
from open_clip_train.train import get_clip_metrics
from torch.utils.data import DataLoader, Dataset

from vlp.cli import main
from vlp.data import CLASS_NAMES, load_default

COUNT = 300
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}."]
WORDS = ["dark", "light", "plain", "patterned", "photo"]  # in the tiny tokenizer's vocabulary, unlike digits


def accuracy(output, target, topk=(1,)):
    """``open_clip_train.zero_shot.accuracy`` line for line, but for ``.item()``: its ``float()`` of a 1-element
    array is an error under NumPy 2."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).item() for k in topk]


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.resize((36, 31), Image.BICUBIC).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A Parquet of PNG bytes, integer labels and one distinct caption per image (four words spelling the index
    in base 5, then the class: no two captions tokenize alike, so no two texts tie), with classnames.txt."""
    val = load_default("val")
    root = tmp_path_factory.mktemp("openclip_eval")
    images = [png(val.pil(i)) for i in range(COUNT)]
    captions = [" ".join(WORDS[i // 5 ** k % 5] for k in range(4)) + f" {CLASS_NAMES[val.labels[i]]}"
                for i in range(COUNT)]
    pq.write_table(pa.table({"image": images, "label": [int(x) for x in val.labels[:COUNT]], "caption": captions}),
                   root / "val.parquet")
    (root / "classnames.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return root / "val.parquet", images, [int(x) for x in val.labels[:COUNT]], captions


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("openclip_export") / "model"
    assert main(["export", str(tiny_run), "--format", "open_clip", "--output", str(out)]) == 0
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{out}")


class Pairs(Dataset):
    """(OpenCLIP-preprocessed image, label), as an OpenCLIP evaluation dataset yields them."""

    def __init__(self, images, labels, preprocess):
        self.images, self.labels, self.preprocess = images, labels, preprocess

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.preprocess(Image.open(io.BytesIO(self.images[index]))), self.labels[index]


def vlp_eval(tiny_run, out, task, path, *extra):
    assert main(["eval", "--model", str(tiny_run), "--task", task, "--data", str(path), "--output", str(out),
                 "--batch-size", "64", "--workers", "2", *extra]) == 0
    return json.loads((out / "results.json").read_text())


def test_zeroshot_top1_and_top5_equal_open_clip_train(tiny_run, exported, data, tmp_path, monkeypatch):
    path, images, labels, _ = data
    results = vlp_eval(tiny_run, tmp_path, "zeroshot", path, "--templates", *TEMPLATES)
    model, preprocess, tokenizer = exported
    classifier = open_clip.build_zero_shot_classifier(model, tokenizer, CLASS_NAMES, TEMPLATES,
                                                      num_classes_per_batch=10, device="cpu")
    loader = DataLoader(Pairs(images, labels, preprocess), batch_size=64, num_workers=2)
    args = SimpleNamespace(device="cpu", precision="fp32", batch_size=64)
    monkeypatch.setattr(zero_shot, "accuracy", accuracy)
    top1, top5 = zero_shot.run(model, classifier, loader, args)
    assert results["counts"]["images"] == COUNT and results["counts"]["skipped_unreadable"] == 0
    assert round(results["metrics"]["top1"] * COUNT) == round(top1 * COUNT)  # the same images correct
    assert round(results["metrics"]["top5"] * COUNT) == round(top5 * COUNT)
    print(f"top-1 {top1:.4f} top-5 {top5:.4f} in both")


def test_retrieval_recall_equals_open_clip_get_clip_metrics(tiny_run, exported, data, tmp_path):
    path, images, _, captions = data
    results = vlp_eval(tiny_run, tmp_path, "retrieval", path)
    model, preprocess, tokenizer = exported
    with torch.no_grad():
        image_features = model.encode_image(torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in images]),
                                            normalize=True)
        text_features = model.encode_text(tokenizer(captions), normalize=True)
    expected = get_clip_metrics(image_features, text_features, model.logit_scale.exp())
    assert results["settings"]["protocol"] == "multi-caption" and results["counts"]["texts"] == COUNT
    for name, value in expected.items():
        assert results["metrics"][name] == pytest.approx(float(value), abs=1e-6), name
    print({k: round(float(v), 4) for k, v in expected.items() if "R@" in k})
