"""Every format a user can point data.train / data.val at reads the same pairs."""
from __future__ import annotations

import json

import pytest

from datagen import encode, good_shards, photo
from vlp.config import ConfigError
from vlp.data import iter_in_order, load_eval_set, open_sources, read_captions
from vlp.data.pipeline import caption_candidates

COUNT = 6


def captions_of(spec) -> list[str]:
    (source,), _ = open_sources(spec)
    return [caption_candidates(raw.captions, 4096)[0][1] for raw in iter_in_order(source)]


@pytest.fixture
def image_files(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(COUNT):
        photo(i).save(root / f"{i:02d}.jpg")
    return root


def test_csv_jsonl_and_parquet_manifests(tmp_path, image_files):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"image": f"images/{i:02d}.jpg", "caption": f"photo number {i}"} for i in range(COUNT)]
    csv = tmp_path / "m.csv"
    csv.write_text("image,caption\n" + "".join(f"{r['image']},\"{r['caption']}\"\n" for r in rows))
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / "m.parquet"  # image bytes inline, and a list of captions per row
    pq.write_table(pa.table({"jpg": [encode(photo(i)) for i in range(COUNT)],
                             "texts": [[f"photo number {i}", f"alt {i}"] for i in range(COUNT)]}), parquet)
    expected = [r["caption"] for r in rows]
    assert captions_of(str(csv)) == expected
    assert captions_of(str(jsonl)) == expected
    assert captions_of([{"path": str(parquet), "caption_fields": ["texts"]}]) == expected
    (source,), _ = open_sources(str(csv))
    assert type(source).__name__ == "ManifestSource" and len(source) == COUNT
    assert source.raw(2).image == (image_files / "02.jpg").read_bytes()
    with pytest.raises(ConfigError, match=r"m\.csv has no caption column 'title'"):
        open_sources([{"path": str(csv), "caption_fields": ["title"]}])


def test_manifest_row_with_a_missing_file_is_marked(tmp_path, image_files):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,caption\nimages/00.jpg,ok\nimages/nope.jpg,lost\n")
    (source,), _ = open_sources(str(manifest))
    assert source.raw(0).bad is None and source.raw(1).bad == "missing_file"


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    data = datasets.Dataset.from_dict({"image": [photo(i) for i in range(COUNT)],
                                       "text": [f"hf photo {i}" for i in range(COUNT)]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "text": datasets.Value("string")}))
    datasets.DatasetDict({"train": data, "validation": data.select(range(2))}).save_to_disk(tmp_path / "hf")
    assert captions_of(str(tmp_path / "hf")) == [f"hf photo {i}" for i in range(COUNT)]
    (source,), _ = open_sources(str(tmp_path / "hf"))
    assert isinstance(source.raw(0).image, bytes)  # decoded by vlp's workers, not by datasets
    assert len(load_eval_set(str(tmp_path / "hf"), 100)) == 2  # data.val reads the validation split


def test_image_folder_with_sidecar_captions_and_with_class_folders(tmp_path, image_files):
    for i in range(COUNT):
        (image_files / f"{i:02d}.txt").write_text(f"sidecar {i}\n")
    assert captions_of(str(image_files)) == [f"sidecar {i}" for i in range(COUNT)]
    classes = tmp_path / "classes"
    for name in ("red_fox", "cat"):
        (classes / name).mkdir(parents=True)
        for i in range(3):
            photo(i).save(classes / name / f"{i}.png")
    (source,), _ = open_sources(str(classes))
    assert source.class_names == ["cat", "red fox"]
    first = source.raw(0)
    assert first.label == 0 and "a photo of a cat." in first.captions["class"]
    evaluation = load_eval_set(str(classes), 100)
    assert evaluation.class_names == ["cat", "red fox"] and list(evaluation.labels) == [0, 0, 0, 1, 1, 1]


def test_webdataset_shards_with_json_recaptions(tmp_path):
    pattern = good_shards(tmp_path, shards=2, per_shard=3)
    assert captions_of(pattern) == [f"caption s{s}_ {i}" for s in range(2) for i in range(3)]
    recaptions = captions_of([{"path": pattern, "caption_fields": ["json.recaption"]}])
    assert recaptions[0] == "synthetic s0_ 0"
    (source,), _ = open_sources(pattern)
    assert source.shard_sizes() == [3, 3]
    (tmp_path / "sizes.json").write_text(json.dumps({"s-000.tar": 3, "s-001.tar": 3}))
    assert read_captions(pattern, limit=4) == [f"caption s0_ {i}" for i in range(3)] + ["caption s1_ 0"]


def test_several_sources_mixed_by_weight(tmp_path):
    from vlp.data.stream import SlotStream

    a = good_shards(tmp_path / "a", shards=2, per_shard=50, prefix="a")
    b = good_shards(tmp_path / "b", shards=2, per_shard=50, prefix="b")
    sources, weights = open_sources([{"path": a, "weight": 3}, {"path": b, "weight": 1}])
    stream = SlotStream(sources, weights, seed=0, slot=0, slots=1, shuffle_buffer=10)
    keys = [stream.next()[0].key for _ in range(2000)]
    share = sum(k.startswith("a") for k in keys) / len(keys)
    assert 0.72 < share < 0.78  # 3:1, resampled past each source's 100 samples
