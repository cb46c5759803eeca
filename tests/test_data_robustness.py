"""Every bad sample is skipped and counted under its reason; nothing crashes, and an unusable dataset stops with
a one-line error naming its path."""
from __future__ import annotations

import json
import tarfile
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from datagen import encode, good_samples, photo, write_shard
from vlp.config import AugmentConfig, CaptionConfig, ConfigError, ViewsConfig
from vlp.data import DataError, open_sources
from vlp.data.decode import BadSample, decode_image
from vlp.data.pipeline import PrepareSample
from vlp.data.stream import SlotStream
from vlp.data.transforms import TrainViews

VISUAL = SimpleNamespace(image_size=16, interpolation="bilinear", patch_size=4, mean=(0.5,) * 3, std=(0.5,) * 3)
MAX_PIXELS = 5000  # so a 100x100 image is "huge" without building a real decompression bomb


def special_modes() -> dict[str, bytes]:
    """Images that are odd but usable: CMYK JPEG, 16-bit grey PNG, palette PNG with transparency, RGBA PNG."""
    sixteen = Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16))
    palette = photo(1).convert("P")
    palette.info["transparency"] = 0
    return {"cmyk": encode(photo(2).convert("CMYK")), "i16": encode(sixteen, "PNG"),
            "palette": encode(palette, "PNG"), "rgba": encode(photo(3).convert("RGBA"), "PNG")}


def broken_dataset(root) -> tuple[str, Counter, int]:
    """Shards holding every kind of bad sample; returns the pattern, the expected counts and the good count."""
    good = good_samples("g", 4)
    jpeg = encode(photo(9))
    samples = good + [(f"m_{name}", {"png" if name != "cmyk" else "jpg": data, "txt": b"odd mode"})
                      for name, data in special_modes().items()]
    bad = {
        "empty_image": [("b_zero", {"jpg": b"", "txt": b"zero bytes"})],
        "corrupt_image": [("b_trunc", {"jpg": jpeg[: len(jpeg) // 2], "txt": b"cut jpeg"})],
        "unknown_format": [("b_noise", {"jpg": bytes(range(256)) * 4, "txt": b"not an image"})],
        "too_large": [("b_huge", {"jpg": encode(photo(5, (100, 100))), "txt": b"huge"})],
        "empty_caption": [("b_empty", {"jpg": jpeg, "txt": b""}), ("b_space", {"jpg": jpeg, "txt": b" \n\t "})],
        "caption_not_utf8": [("b_latin", {"jpg": jpeg, "txt": b"caf\xe9 \xff"})],
        "caption_too_long": [("b_long", {"jpg": jpeg, "txt": b"word " * 1000})],
        "missing_image": [("b_noimg", {"txt": b"a caption alone"})],
        "missing_caption": [("b_nocap", {"jpg": jpeg})],
    }
    for items in bad.values():
        samples += items
    write_shard(root / "part-000.tar", samples)
    (root / "part-001.tar").write_bytes(b"this is not a tar file" * 100)
    cut = write_shard(root / "part-002.tar", good_samples("c", 6))
    with tarfile.open(cut) as tar:
        fourth_image = tar.getmember("c00003.jpg")
    cut.write_bytes(cut.read_bytes()[: fourth_image.offset_data + fourth_image.size // 2])  # samples 0-2 survive
    # part-003.tar is named by the pattern but does not exist
    expected = Counter({reason: len(items) for reason, items in bad.items()})
    expected.update({"bad_shard": 2, "truncated_shard": 1})
    surviving = 3
    return str(root / "part-{000..003}.tar"), expected, len(good) + 4 + surviving


def prepare(**captions) -> PrepareSample:
    return PrepareSample(TrainViews(VISUAL, AugmentConfig(), ViewsConfig()), CaptionConfig(max_chars=4096, **captions),
                         MAX_PIXELS, fast_decode=True)


def count_one_epoch(pattern: str, items: int) -> tuple[Counter, int]:
    sources, weights = open_sources(pattern)
    stream = SlotStream(sources, weights, seed=0, slot=0, slots=1, shuffle_buffer=8)
    prep, bad, good = prepare(), Counter(), 0
    for _ in range(items):
        raw, seed = stream.next()
        try:
            if isinstance(raw, str) or raw.bad:
                raise BadSample(raw if isinstance(raw, str) else raw.bad)
            fields = prep(raw, seed)
            assert fields["images"].shape == (3, 16, 16) and fields["images"].dtype.is_floating_point is False
            good += 1
        except BadSample as err:
            bad[err.reason] += 1
    return bad, good


def test_every_bad_sample_is_skipped_and_counted_by_reason(tmp_path):
    pattern, expected, good = broken_dataset(tmp_path)
    items = good + sum(expected.values())
    bad, found_good = count_one_epoch(pattern, items)
    assert bad == expected
    assert found_good == good == 11
    bad2, _ = count_one_epoch(pattern, 2 * items)  # the second epoch meets the same samples again
    assert bad2 == Counter({k: 2 * v for k, v in expected.items()})


def test_odd_image_modes_become_faithful_rgb():
    modes = special_modes()
    white16 = decode_image(modes["i16"], MAX_PIXELS)
    assert white16.mode == "RGB" and np.asarray(white16).min() == 255  # 16-bit scaled, not clipped garbage
    rgba = photo(3).convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited on white
    assert np.asarray(decode_image(encode(rgba, "PNG"), MAX_PIXELS)).min() == 255
    assert decode_image(modes["cmyk"], MAX_PIXELS).mode == "RGB"
    assert decode_image(modes["palette"], MAX_PIXELS).mode == "RGB"


def test_pixel_cap_is_checked_before_decoding():
    bomb = Image.new("1", (12000, 12000))  # 144 megapixels, a few KB as PNG
    data = encode(bomb, "PNG")
    assert len(data) < 200_000
    with pytest.raises(BadSample) as err:
        decode_image(data, 64_000_000)
    assert err.value.reason == "too_large"


def test_training_on_broken_shards_logs_the_counts(tiny, tmp_path):
    from vlp.train.loop import train

    (tmp_path / "shards").mkdir()
    pattern, expected, good = broken_dataset(tmp_path / "shards")
    cfg = tiny(f"data.train={pattern}", "data.val=null", "train.steps=3", "data.batch_size=11",
               f"data.max_pixels={MAX_PIXELS}", "data.shuffle_buffer=4", "train.checkpoint_every=3")
    train(cfg)
    records = [json.loads(line) for line in open(f"{cfg.run_dir}/metrics.jsonl")]
    last = records[-1]
    # 3 steps of 11 good samples = 3 epochs of the good samples; at least 2 full passes over every bad one
    for reason, count in expected.items():
        assert 2 * count <= last[f"bad/{reason}"] <= 3 * count, reason
    assert 0 <= last["data_wait"] <= 1


def test_a_dataset_with_no_usable_sample_stops_naming_its_path(tmp_path):
    jpeg = encode(photo(0))
    path = write_shard(tmp_path / "allbad.tar", [(f"k{i}", {"jpg": jpeg, "txt": b""}) for i in range(5)])
    from vlp.data import build_train_stream
    from vlp.config import DataConfig
    from vlp.data.stream import StreamPosition

    data = DataConfig(train=str(path), batch_size=2)
    with pytest.raises(DataError, match=r"no usable sample in .*allbad\.tar: empty_caption=5"):
        build_train_stream(data, VISUAL, lambda texts: None, 0, 0, 1, StreamPosition())


def test_no_matching_files_is_a_config_error_naming_the_pattern(tmp_path):
    with pytest.raises(ConfigError, match=r"no tar shards match .*nothing-\{0\.\.3\}\.tar"):
        open_sources(str(tmp_path / "nothing-{0..3}.tar"))
    with pytest.raises(ConfigError, match="data path not found"):
        open_sources(str(tmp_path / "missing.csv.gz"))


def test_cli_reports_an_unusable_dataset_in_one_line(tmp_path, capsys):
    from vlp.cli import main

    jpeg = encode(photo(0))
    path = write_shard(tmp_path / "allbad.tar", [(f"k{i}", {"jpg": jpeg[:40], "txt": b"x"}) for i in range(3)])
    code = main(["train", "--config", "configs/tiny.yaml", f"run_dir={tmp_path / 'run'}", f"data.train={path}",
                 "data.val=null", "model.tokenizer.type=clip_bpe"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "no usable sample in" in err and "allbad.tar" in err and "corrupt_image=3" in err
