"""``vlp data inspect`` and ``vlp data convert`` as users run them: exact counts, a real grid, shards that read
back as the source did, and no half-written shard when the process is killed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from datagen import encode, photo, write_shard
from test_data_robustness import broken_dataset
from vlp.cli import main
from vlp.data import BadSample, decode_image, iter_in_order, open_sources
from vlp.data.pipeline import caption_candidates


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["data", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_back(spec) -> list[tuple[list[str], np.ndarray]]:
    """Every usable sample of ``spec`` in file order: its captions and its decoded RGB pixels."""
    sources, _ = open_sources(spec)
    samples = []
    for raw in (raw for source in sources for raw in iter_in_order(source)):
        try:
            pixels = np.asarray(decode_image(raw.image, 10 ** 8))
        except (BadSample, TypeError):
            continue
        samples.append(([text for _, text in caption_candidates(raw.captions, 4096)], pixels))
    return samples


def test_inspect_counts_every_bad_sample_and_writes_a_grid(tmp_path, capsys):
    pattern, expected, good = broken_dataset(tmp_path)
    expected = expected - Counter(too_large=1)  # 100x100 is over the tests' pixel cap, not under the default one
    grid = tmp_path / "grid.png"
    code, out, _ = run_cli(capsys, "inspect", pattern, "--json", "--grid", str(grid), "--grid-size", "9")
    report = json.loads(out)
    assert code == 0
    assert report["bad"] == dict(expected)
    assert report["usable"] == good + 1 == 12 and report["read"] == 12 + sum(expected.values())
    assert report["image_width"]["max"] == 100 and report["image_width"]["min"] == 20
    assert report["caption_fields"] == {"txt": 12} and report["captions"] == 12
    with Image.open(grid) as picture:
        assert picture.format == "PNG" and picture.width > 3 * 160 and picture.height > 3 * 160
        assert len(np.unique(np.asarray(picture.convert("L")))) > 20  # images and text, not a blank page

    code, out, _ = run_cli(capsys, "inspect", pattern, "--limit", "5", "--grid", str(grid))
    assert code == 0 and "read 5 samples, 5 usable, 0 bad" in out and "bad samples: none" in out
    code, out, _ = run_cli(capsys, "inspect", pattern, "--limit", "4", "--grid", str(grid), "--json",
                           "--caption-field", "txt", "--caption-field", "json.recaption")
    assert json.loads(out)["caption_fields"] == {"json.recaption": 4, "txt": 4}


def test_inspect_of_an_unusable_dataset_is_one_line_naming_it(tmp_path, capsys):
    shard = write_shard(tmp_path / "allbad.tar", [(f"k{i}", {"jpg": b"", "txt": b"x"}) for i in range(3)])
    code, _, err = run_cli(capsys, "inspect", str(shard), "--grid", str(tmp_path / "g.png"))
    error = err.strip().splitlines()[-1]  # after the progress bar's carriage-return updates
    assert code == 1 and error.startswith("vlp data: error: no usable sample in")
    assert "allbad.tar" in error and "empty_image=3" in error
    assert not (tmp_path / "g.png").exists()
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "none-{0..3}.tar"))
    assert code == 2 and err.strip().splitlines() == [f"vlp data: error: {err.split('error: ')[1].strip()}"]
    assert "no tar shards match" in err


def folder_source(root):
    """Seven images with sidecar captions (JPEG, PNG, an RGBA PNG, a CMYK JPEG) and one corrupt file."""
    root.mkdir(parents=True)
    for i in range(7):
        image = photo(i, (24 + i, 20))
        name, image = ((f"{i}.png", image.convert("RGBA")) if i == 2 else
                       (f"{i}.jpg", image.convert("CMYK")) if i == 4 else
                       (f"{i}.png" if i % 2 else f"{i}.jpg", image))
        image.save(root / name)
        (root / name).with_suffix(".txt").write_text(f"picture {i}")
    (root / "7.jpg").write_bytes(encode(photo(7))[:100])
    (root / "7.txt").write_text("picture 7")
    return str(root), Counter(corrupt_image=1)


def manifest_source(root):
    """A CSV manifest of paths relative to it, with a row whose file is missing."""
    folder_source(root / "images")
    rows = "".join(f'images/{i}.{"png" if i % 2 or i == 2 else "jpg"},"picture {i}"\n' for i in range(7))
    (root / "m.csv").write_text("image,caption\n" + rows + "images/gone.jpg,lost\n")
    return str(root / "m.csv"), Counter(missing_file=1)


def hf_source(root):
    import datasets

    images = [photo(i, (24 + i, 20)) for i in range(7)]
    data = datasets.Dataset.from_dict({"image": images, "text": [f"picture {i}" for i in range(7)]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "text": datasets.Value("string")}))
    data.save_to_disk(root / "hf")
    return str(root / "hf"), Counter()


@pytest.mark.parametrize("make_source", [folder_source, manifest_source, hf_source])
def test_convert_writes_shards_that_read_back_as_the_source(tmp_path, capsys, make_source):
    source, bad = make_source(tmp_path / "src")
    original = read_back(source) if make_source is hf_source else None
    dst = tmp_path / "shards"
    code, out, _ = run_cli(capsys, "convert", source, str(dst), "--format", "webdataset", "--shard-size", "3")
    assert code == 0
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(bad.items())) or "none"
    assert out.strip() == f"wrote 7 samples in 3 shards to {dst} (skipped: {skipped})"
    sizes = json.loads((dst / "sizes.json").read_text())
    assert sizes == {"shard-000000.tar": 3, "shard-000001.tar": 3, "shard-000002.tar": 1}
    assert sorted(p.name for p in dst.iterdir()) == [*sizes, "sizes.json"]

    converted = read_back(str(dst / "shard-{000000..000002}.tar"))
    assert [captions for captions, _ in converted] == [[f"picture {i}"] for i in range(7)]
    original = original or read_back(source)
    for (_, pixels), (_, expected) in zip(converted, original, strict=True):
        assert np.array_equal(pixels, expected)  # stored bytes or lossless PNG: the very pixels training saw
    with tarfile.open(dst / "shard-000000.tar") as tar:
        assert json.loads(tar.extractfile("000000000.json").read())["key"] is not None


def test_convert_keeps_the_chosen_caption_fields_and_refuses_to_mix_with_earlier_shards(tmp_path, capsys):
    from datagen import good_shards

    pattern = good_shards(tmp_path / "in", shards=2, per_shard=4)
    dst = tmp_path / "out"
    both = ["--caption-field", "txt", "--caption-field", "json.recaption"]
    assert run_cli(capsys, "convert", pattern, str(dst), "--format", "webdataset", *both)[0] == 0
    fields = [{"path": str(dst / "shard-000000.tar"), "caption_fields": ["txt", "json.recaption"]}]
    assert [captions for captions, _ in read_back(fields)][:2] == [["caption s0_ 0", "synthetic s0_ 0"],
                                                                  ["caption s0_ 1", "synthetic s0_ 1"]]

    code, _, err = run_cli(capsys, "convert", pattern, str(dst), "--format", "webdataset")
    assert code == 1 and "already holds shards" in err and "--overwrite" in err
    code, out, _ = run_cli(capsys, "convert", pattern, str(dst), "--format", "webdataset", "--overwrite",
                           "--caption-field", "json.recaption", "--max-shard-bytes", "25KB")
    assert code == 0
    sizes = json.loads((dst / "sizes.json").read_text())
    assert sum(sizes.values()) == 8 and len(sizes) > 1
    *full, last = [(dst / name).stat().st_size for name in sizes]
    assert all(25_000 <= size < 25_000 + 10_240 for size in full) and last < 25_000 + 10_240
    assert read_back(str(dst / "shard-000000.tar"))[0][0] == ["synthetic s0_ 0"]  # KEY.txt holds the chosen field
    classes = tmp_path / "classes" / "cat"
    classes.mkdir(parents=True)
    photo(0).save(classes / "0.png")
    code, _, err = run_cli(capsys, "convert", str(classes.parent), str(tmp_path / "x"), "--format", "webdataset",
                           "--caption-field", "title")
    assert code == 2 and "has no caption field 'title'" in err


SLOW_CONVERT = """
import sys, time
import vlp.data.convert as convert
members = convert.tar_members
convert.tar_members = lambda *args: (time.sleep(0.05), members(*args))[1]
from vlp.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_convert_leaves_only_complete_shards(tmp_path):
    pattern = str(write_shard(tmp_path / "in.tar", [(f"k{i:03d}", {"png": encode(photo(i, (16, 16)), "PNG"),
                                                                  "txt": f"caption {i}".encode()})
                                                     for i in range(120)]))
    dst = tmp_path / "out"
    argv = ["data", "convert", pattern, str(dst), "--format", "webdataset", "--shard-size", "10"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, *argv], env=env)
    deadline = time.monotonic() + 120
    while not (dst / "shard-000001.tar").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = sorted(dst.glob("shard-*.tar"))
    assert 2 <= len(finished) < 12 and not (dst / "sizes.json").exists()
    for shard in finished:
        with tarfile.open(shard) as tar:  # a complete tar: every member whole, ten samples
            names = tar.getnames()
            assert len(names) == 30 and all(len(tar.extractfile(m).read()) == m.size for m in tar.getmembers())

    subprocess.run([sys.executable, "-m", "vlp.cli", *argv, "--overwrite"], env=env, check=True)
    sizes = json.loads((dst / "sizes.json").read_text())
    assert len(sizes) == 12 and set(sizes.values()) == {10}
    assert sorted(p.name for p in dst.iterdir()) == [*sorted(sizes), "sizes.json"]
