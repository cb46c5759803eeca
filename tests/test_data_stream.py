"""The training stream: deterministic by seed, resumable at sample granularity, split across ranks and workers;
caption policies, augmentation views and MIM masks."""
from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch

from datagen import good_shards
from vlp.config import AugmentConfig, CaptionConfig, DataConfig, ViewsConfig
from vlp.data import build_train_stream
from vlp.data.masks import MASKS
from vlp.data.pipeline import CaptionPolicy
from vlp.data.stream import StreamPosition, stream_loader

VISUAL = SimpleNamespace(image_size=16, interpolation="bilinear", patch_size=4, mean=(0.5,) * 3, std=(0.5,) * 3)


def fake_tokenizer(texts):
    return torch.tensor([[len(t), sum(map(ord, t)) % 997] for t in texts])


@pytest.fixture(scope="module")
def mixed_spec(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    return [{"path": good_shards(root / "a", shards=3, per_shard=10, prefix="a"), "weight": 2},
            {"path": "default", "weight": 1}]


def batches(spec, count, workers, position=None, seed=0, rank=0, world=1, **data):
    cfg = DataConfig(train=spec, batch_size=4, num_workers=workers, shuffle_buffer=7, **data)
    position = position or StreamPosition()
    loader = stream_loader(build_train_stream(cfg, VISUAL, fake_tokenizer, seed, rank, world, position), workers)
    out = []
    for batch in loader:
        position.consumed(batch)
        out.append(batch)
        if len(out) == count:
            break
    return out, position


def signature(batch) -> tuple:
    return tuple(batch["captions"]), batch["images"].sum().item()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_sees_exactly_the_uninterrupted_samples(mixed_spec, workers):
    full, _ = batches(mixed_spec, 9, workers)
    first, position = batches(mixed_spec, 5, workers)  # an odd count: the next batch is worker 1's turn
    saved = json.loads(json.dumps(position.state_dict(workers, 1)))  # through the checkpoint's JSON
    rest, _ = batches(mixed_spec, 4, workers, StreamPosition(saved))
    assert [signature(b) for b in first + rest] == [signature(b) for b in full]
    assert len({signature(b) for b in full}) == 9  # crossing the 30-sample shard source's epoch end


def test_the_stream_is_deterministic_by_seed(mixed_spec):
    a, _ = batches(mixed_spec, 3, 0, seed=1)
    b, _ = batches(mixed_spec, 3, 0, seed=1)
    c, _ = batches(mixed_spec, 3, 0, seed=2)
    assert [signature(x) for x in a] == [signature(x) for x in b] != [signature(x) for x in c]


def test_ranks_and_workers_read_disjoint_shares_of_an_epoch(tmp_path):
    spec = good_shards(tmp_path, shards=4, per_shard=6)  # 24 samples, 2 ranks x 2 workers
    seen = []
    for rank in range(2):
        got, _ = batches(spec, 2, 2, rank=rank, world=2, augment=AugmentConfig(enabled=False))
        seen += [c for b in got for c in b["captions"]]  # one batch from each of the rank's two workers
    assert len(seen) == 16 and len(set(seen)) == 16  # no sample read twice within the epoch


def test_caption_policy_samples_by_weight_and_all_returns_every_caption():
    fields = {"txt": "original alt text", "json.recaption": ["long synthetic one", "short synthetic"]}
    policy = CaptionPolicy(CaptionConfig(weights={"txt": 0.25, "json.recaption": 0.75}))
    rng = random.Random(0)
    sources = [policy(fields, rng)[1] for _ in range(4000)]
    assert 0.71 < sources.count("json.recaption") / 4000 < 0.79
    uniform = CaptionPolicy(CaptionConfig())
    assert 0.30 < [uniform(fields, rng)[1] for _ in range(3000)].count("txt") / 3000 < 0.37
    texts, names = CaptionPolicy(CaptionConfig(policy="all", max_per_image=2))(fields, rng)
    assert texts == ["original alt text", "long synthetic one"] and names == ["txt", "json.recaption"]


def test_all_captions_batch_as_k_positives_with_a_mask(tmp_path):
    spec = [{"path": good_shards(tmp_path, 1, 8), "caption_fields": ["txt", "json.recaption"]}]
    (batch,), _ = batches(spec, 1, 0, captions=CaptionConfig(policy="all", max_per_image=3))
    assert batch["tokens"].shape == (4, 3, 2)
    assert batch["caption_mask"].tolist() == [[True, True, False]] * 4
    assert batch["caption_source"][0] == ["txt", "json.recaption"]


def test_views_and_mim_masks_are_named_batch_fields(mixed_spec):
    views = ViewsConfig(global_crops=2, local_crops=3, local_size=8, mask="block", mask_ratio=[0.25, 0.25])
    (batch,), _ = batches(mixed_spec, 1, 0, views=views)
    assert batch["images"].shape == (4, 3, 16, 16) and batch["images"].dtype == torch.uint8
    assert batch["global_crops"].shape == (4, 2, 3, 16, 16)
    assert batch["local_crops"].shape == (4, 3, 3, 8, 8)
    assert batch["mim_mask"].shape == (4, 4, 4) and batch["mim_mask"].sum(dim=(1, 2)).tolist() == [4] * 4


def test_device_normalize_equals_the_inference_transforms_normalization():
    from torchvision.transforms import v2 as T

    from vlp.data.transforms import DeviceNormalize

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    pixels = torch.randint(0, 256, (2, 3, 3, 8, 8), dtype=torch.uint8)
    batch = DeviceNormalize(mean, std, torch.device("cpu"))({"global_crops": pixels.clone(), "captions": ["x"]})
    expected = T.Normalize(mean, std)(T.ToDtype(torch.float32, scale=True)(pixels.view(-1, 3, 8, 8)))
    assert batch["global_crops"].dtype == torch.float32 and batch["captions"] == ["x"]
    assert torch.allclose(batch["global_crops"].view(-1, 3, 8, 8), expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["random", "block"])
def test_masks_hit_the_drawn_ratio(kind):
    mask = MASKS.get(kind)(14, [0.4, 0.4])
    generator = torch.Generator().manual_seed(0)
    drawn = [mask(generator) for _ in range(20)]
    assert all(int(m.sum()) == round(0.4 * 196) for m in drawn)
    assert len({m.flatten().nonzero().flatten().tolist().__repr__() for m in drawn}) == 20


def test_block_masks_are_blocky():
    """Block-wise masks leave far fewer masked-unmasked borders than random ones of the same ratio."""
    def borders(mask):
        return int((mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum())

    generator = torch.Generator().manual_seed(0)
    block = sum(borders(MASKS.get("block")(14, [0.4, 0.4])(generator)) for _ in range(20))
    scattered = sum(borders(MASKS.get("random")(14, [0.4, 0.4])(generator)) for _ in range(20))
    assert block < 0.6 * scattered


def test_resumed_training_on_shards_with_workers_matches_the_uninterrupted_run(tiny, tmp_path):
    from vlp.train.loop import train

    spec = good_shards(tmp_path / "shards", shards=3, per_shard=20)
    common = [f"data.train={spec}", "data.val=null", "data.num_workers=2", "data.batch_size=8",
              "data.shuffle_buffer=16", "train.checkpoint_every=3", "model.tokenizer.type=clip_bpe"]

    def losses(run):
        return {r["step"]: r["loss"] for r in map(json.loads, open(run / "metrics.jsonl")) if "loss" in r}

    whole = tiny(*common, "train.steps=8", f"run_dir={tmp_path / 'whole'}")
    train(whole)
    part = tiny(*common, "train.steps=3", f"run_dir={tmp_path / 'part'}")
    train(part)
    train(tiny(*common, "train.steps=8", f"run_dir={tmp_path / 'part'}"), resume="auto")
    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "part")
    assert sorted(got) == list(range(1, 9))
    for step in range(4, 9):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
