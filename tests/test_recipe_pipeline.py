"""The recipe engine's pipeline for model steps: the workers decode and preprocess images for the step that follows
them (``Step.prepare``), the read check's decode is that decode, and the main process converts each batch at once.
Checked against the slow, obvious way: the model's own preprocess image by image, workers against none, and a
count of the decodes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

import vlp
import vlp.data.decode
from datagen import encode
from test_recipes import decisions, planted_shards, snapshot
from vlp.cli import main
from vlp.data.decode import BadSample
from vlp.recipes import load_recipe, runner
from vlp.recipes.shards import as_sample
from vlp.recipes.steps.embedding import SplitPreprocess

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return planted_shards(tmp_path_factory.mktemp("pipeline") / "in")


def photos(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 70 - 5 * i, 3), dtype=np.uint8))
            for i in range(count)]


def cut_at_tensor(transforms: list) -> T.Compose:
    """A preprocess whose last transform takes one image only: the split must see it and run it whole."""
    return T.Compose([*transforms, T.Lambda(lambda pixels: pixels[:, 1:-1, 1:-1].reshape(3, 30, 30))])


@pytest.mark.parametrize("kind", ["vlp", "open_clip", "one_image_only"])
def test_split_preprocess_gives_the_whole_preprocess_numbers(tiny_run, kind):
    if kind == "vlp":
        preprocess = vlp.load(tiny_run, device="cpu").preprocess
    elif kind == "open_clip":
        preprocess = open_clip.image_transform(32, is_train=False)
    else:
        preprocess = cut_at_tensor([T.Resize(32), T.CenterCrop(32), T.PILToTensor(),
                                    T.ToDtype(torch.float32, scale=True)])
    split = SplitPreprocess(preprocess)
    images = photos(5)
    batch = split.batched([split.per_image(image) for image in images])
    whole = torch.stack([preprocess(image) for image in images])
    assert batch.shape == whole.shape and batch.is_contiguous()
    torch.testing.assert_close(batch, whole, atol=1e-5, rtol=0)
    if kind == "one_image_only":
        assert split.pil is None  # run whole, per image
    else:
        assert split.affine is not None and split.per_image(images[0]).dtype == np.uint8  # uint8 to the workers


def clip_score_run(shards: str, out: Path, tiny_run, *overrides: str) -> None:
    code = main(["recipe", "run", str(REPO / "data_recipes/clip_score.yaml"), f"input={shards}", f"output={out}",
                 f"steps.clip_score.model={tiny_run}", "steps.clip_score.batch_size=8", *overrides])
    assert code == 0


def test_workers_prepare_exactly_what_the_step_computes_itself(shards, tiny_run, tmp_path):
    """Preparation in two worker processes against none: the same bytes everywhere, decisions and output shards
    with their scores. The read check decodes the JPEGs at the model's draft size and still finds the truncated
    one; the last stage, which only applies clip_score's verdicts, writes no shards of its own."""
    clip_score_run(shards, tmp_path / "workers", tiny_run, "workers=2")
    clip_score_run(shards, tmp_path / "none", tiny_run, "workers=0")
    workers, none = snapshot(tmp_path / "workers"), snapshot(tmp_path / "none")
    assert workers.pop("recipe.yaml") != none.pop("recipe.yaml")  # the resolved recipe records the workers
    assert workers == none
    records = decisions(tmp_path / "workers")
    dropped = {r["key"]: (r["step"], r["reason"]) for r in records if not r["kept"]}
    assert dropped["bad_corrupt"] == ("read", "corrupt_image")
    assert sum(reason == ("clip_score", "low_clip_score") for reason in dropped.values()) > 0
    stage = {index: [json.loads(line) for path in sorted((tmp_path / "workers").glob(f"decisions/stage{index}/*"))
                     for line in path.open()] for index in (0, 1)}
    assert [r["key"] for r in stage[1]] == [r["key"] for r in stage[0] if r["kept"]]
    assert all("clip_score" in r["scores"] for r in stage[1])


def test_each_image_is_decoded_once(shards, tiny_run, tmp_path, monkeypatch):
    """The read check decodes at the draft size the model step wants, and the step reuses that decode."""
    calls = []
    decode = vlp.data.decode.decode_image
    monkeypatch.setattr(vlp.data.decode, "decode_image", lambda *args: calls.append(args[2]) or decode(*args))
    monkeypatch.setattr(runner, "write_report", lambda *args: {})  # its example grids decode images again
    runner.run_recipe(load_recipe(REPO / "data_recipes/clip_score.yaml", [
        f"input={shards}", f"output={tmp_path / 'out'}", f"steps.clip_score.model={tiny_run}", "workers=0"]))
    read = [r for r in decisions(tmp_path / "out") if r["scores"].get("read") or r["step"] == "read"]
    with_image = [r for r in read if r["reason"] not in ("empty_caption", "missing_caption", "truncated_shard")]
    assert len(calls) == len(with_image)  # one decode each, the truncated image's included
    assert set(calls) == {28}  # the tiny model's input size: JPEGs decode at 1/2 scale


def test_a_draft_decode_finds_a_truncated_jpeg_and_the_header_gives_the_stored_size():
    data = encode(photos(1)[0].resize((96, 120)))
    sample = as_sample("k", {"jpg": data, "txt": b"a photo"})
    assert sample.image_size == (96, 120) and sample._decoded == (None, None)  # from the header alone
    assert min(sample.decoded(28).size) == 48  # 1/2 scale: 1/4 would go below 28
    assert sample.image.size == (96, 120)
    truncated = as_sample("t", {"jpg": data[: len(data) * 2 // 3], "txt": b"a photo"})
    for size in (28, 8, None):
        with pytest.raises(BadSample, match="corrupt_image"):
            truncated.decoded(size)
