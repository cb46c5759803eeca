"""``vlp eval``: every task writes its report on a tiny trained model; image-folder and CSV data; errors."""
import csv
import json

import pytest

import vlp
from vlp.cli import main
from vlp.data import CLASS_NAMES, ZERO_SHOT_TEMPLATES, load_default
from vlp.eval.datasets import EvalSplit
from vlp.train.loop import train

from conftest import tiny_config

LIMIT = 120


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    train(tiny_config(tmp, "train.steps=2", "data.val=null", "data.batch_size=8"))
    return tmp / "run"


def evaluate(run, out, task, data="default", *extra):
    """Runs ``vlp eval`` and returns results.json."""
    assert main(["eval", "--model", str(run), "--task", task, "--data", str(data), "--output", str(out),
                 "--batch-size", "32", *extra]) == 0
    assert (out / "results.md").read_text().startswith(f"**{task}**")
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("task, figure", [("zeroshot", "confusion_matrix.png"),
                                          ("retrieval", "retrieval_examples.png"),
                                          ("linear-probe", None), ("knn", None)])
def test_each_task_writes_json_markdown_and_plots(run, tmp_path, capsys, task, figure):
    results = evaluate(run, tmp_path, task, "default", "--limit", str(LIMIT))
    assert results["task"] == task and results["data"] == "default"
    assert results["counts"]["skipped_unreadable"] == 0
    assert "| metric | value |" in capsys.readouterr().out
    if figure:
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = results["metrics"]
    if task == "retrieval":
        for direction in ("image_to_text", "text_to_image"):
            recalls = [metrics[f"{direction}_R@{k}"] for k in (1, 5, 10)]
            assert all(0 <= r <= 1 for r in recalls) and recalls == sorted(recalls)
        assert results["settings"]["protocol"] == "unique-captions"  # val captions repeat across images
    else:
        assert all(0 <= value <= 1 for value in metrics.values())
    if task in ("linear-probe", "knn"):
        assert results["counts"]["train_images"] == results["counts"]["test_images"] == LIMIT


def test_zeroshot_accuracy_equals_loaded_model_classify(run, tmp_path):
    results = evaluate(run, tmp_path, "zeroshot", "default", "--limit", str(LIMIT))
    data = load_default("val")
    images = [data.pil(i) for i in range(LIMIT)]
    top = vlp.load(run, device="cpu").classify(images, CLASS_NAMES, ZERO_SHOT_TEMPLATES, top_k=1)
    accuracy = sum(CLASS_NAMES.index(t[0][0]) == label for t, label in zip(top, data.labels[:LIMIT])) / LIMIT
    assert results["metrics"]["top1"] == pytest.approx(accuracy)
    assert results["settings"]["templates"] == ZERO_SHOT_TEMPLATES


@pytest.fixture
def image_folder(tmp_path):
    """Three classes of 10 val images each, one folder name with an underscore, plus one corrupt file."""
    data = load_default("val")
    root = tmp_path / "folder"
    for label, name in [(0, "t_shirt"), (1, "trouser"), (7, "sneaker")]:
        (root / name).mkdir(parents=True)
        indices = [i for i, y in enumerate(data.labels) if y == label][:10]
        for n, i in enumerate(indices):
            data.pil(i).save(root / name / f"{n:02d}.png")
    (root / "trouser" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


@pytest.mark.parametrize("task", ["zeroshot", "linear-probe", "knn"])
def test_image_folder_skips_and_counts_a_corrupt_file(run, image_folder, tmp_path, capsys, task):
    results = evaluate(run, tmp_path / "out", task, image_folder, "--templates", "a photo of a {}.")
    assert results["counts"]["skipped_unreadable"] == 1
    assert results["skipped"] == [str(image_folder / "trouser" / "corrupt.png")]
    assert "skipped 1 unreadable image" in capsys.readouterr().out
    if task == "zeroshot":
        assert results["counts"]["images"] == 30 and 0 <= results["metrics"]["top1"] <= 1
    else:  # 31 files, every 5th held out: 25 train + 6 test, less the corrupt one
        assert results["counts"]["train_images"] + results["counts"]["test_images"] == 30


def test_csv_with_several_captions_per_image_uses_the_multi_caption_protocol(run, image_folder, tmp_path):
    path = image_folder / "captions.csv"
    files = sorted(image_folder.glob("*/*.png"))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for n, file in enumerate(files):
            for phrasing in ("a photo of a {}.", "a {} number {}."):
                writer.writerow([file.relative_to(image_folder), phrasing.format(file.parent.name, n)])
    results = evaluate(run, tmp_path / "out", "retrieval", path)
    assert results["settings"]["protocol"] == "multi-caption"
    assert results["counts"] == {"images": 30, "texts": 60, "skipped_unreadable": 1}
    recalls = [results["metrics"][f"text_to_image_R@{k}"] for k in (1, 5, 10)]
    assert recalls == sorted(recalls) and results["metrics"]["image_to_text_mean_rank"] >= 1
    assert (tmp_path / "out" / "retrieval_examples.png").exists()


def test_split_keep_repoints_captions():
    split = EvalSplit(["a", "b", "c"], [0, 1, 2], ["a1", "b1", "b2", "c1"], [0, 1, 1, 2])
    kept = split.keep([1, 2])
    assert kept.images == ["b", "c"] and kept.labels == [1, 2]
    assert kept.captions == ["b1", "b2", "c1"] and kept.image_of_text == [0, 0, 1]


@pytest.mark.parametrize("args, message", [
    (["--task", "zeroshot", "--data", "/no/such/data"], "data not found: /no/such/data"),
    (["--task", "segmentation"], "unknown task 'segmentation'"),
    (["--task", "zeroshot", "--limit", "4", "--templates", "bogus"], "--templates: prompt template 'bogus'"),
])
def test_errors_are_one_line(run, tmp_path, capsys, args, message):
    assert main(["eval", "--model", str(run), "--output", str(tmp_path), *args]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vlp eval: error:") and message in err


def test_retrieval_without_captions_is_an_error(run, image_folder, tmp_path, capsys):
    assert main(["eval", "--model", str(run), "--task", "retrieval", "--data", str(image_folder),
                 "--output", str(tmp_path)]) == 2
    assert "needs captions" in capsys.readouterr().err


def folder_samples(image_folder):
    """(relative path, class folder name, PNG bytes) of the image folder's readable images, in sorted order."""
    files = [f for f in sorted(image_folder.glob("*/*.png")) if f.name != "corrupt.png"]
    return [(str(f.relative_to(image_folder)), f.parent.name, f.read_bytes()) for f in files]


def test_parquet_with_inline_images_and_label_names_scores_as_the_folder(run, image_folder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = folder_samples(image_folder)
    path = tmp_path / "data" / "test.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"image": [data for _, _, data in samples] + [b"not an image"],
                             "label": [name.replace("_", " ") for _, name, _ in samples] + ["trouser"]}), path)
    folder = evaluate(run, tmp_path / "folder", "zeroshot", image_folder, "--templates", "a photo of a {}.")
    results = evaluate(run, tmp_path / "parquet", "zeroshot", path, "--templates", "a photo of a {}.")
    assert results["counts"] == {**folder["counts"], "skipped_unreadable": 1}
    assert results["metrics"] == folder["metrics"]  # same images, same class order (sorted names)
    # integer labels take their names from classnames.txt beside the data, line n naming label n
    pq.write_table(pa.table({"image": [data for _, _, data in samples],
                             "label": [["t_shirt", "trouser", "sneaker"].index(n) for _, n, _ in samples]}), path)
    (path.parent / "classnames.txt").write_text("t shirt\ntrouser\nsneaker\n")
    named = evaluate(run, tmp_path / "named", "zeroshot", path, "--templates", "a photo of a {}.")
    assert named["metrics"]["top1"] == folder["metrics"]["top1"] and named["counts"]["classes"] == 3


def test_integer_labels_without_names_serve_the_probes_but_not_zeroshot(run, image_folder, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = folder_samples(image_folder)
    path = tmp_path / "test.parquet"
    pq.write_table(pa.table({"image": [d for _, _, d in samples], "label": [i % 3 for i in range(len(samples))]}),
                   path)
    assert evaluate(run, tmp_path / "knn", "knn", path)["counts"]["classes"] == 3
    assert main(["eval", "--model", str(run), "--task", "zeroshot", "--data", str(path)]) == 2
    assert "has labels only: pass --classes FILE" in capsys.readouterr().err
    (tmp_path / "two.txt").write_text("a\nb\n")
    assert main(["eval", "--model", str(run), "--task", "zeroshot", "--data", str(path),
                 "--classes", str(tmp_path / "two.txt")]) == 2
    assert "two.txt names 2 classes; data" in capsys.readouterr().err


def test_jsonl_caption_lists_match_repeated_csv_rows(run, image_folder, tmp_path):
    """A list of captions per JSONL line and one CSV row per caption are the same multi-caption data."""
    samples = folder_samples(image_folder)
    captions = [[f"a photo of a {name}.", f"a {name} number {n}."] for n, (_, name, _) in enumerate(samples)]
    jsonl = image_folder / "captions.jsonl"
    jsonl.write_text("".join(json.dumps({"image": rel, "caption": texts}) + "\n"
                             for (rel, _, _), texts in zip(samples, captions)))
    rows = image_folder / "rows.csv"
    with rows.open("w", newline="") as f:
        csv.writer(f).writerows([["image", "caption"]] + [[rel, text] for (rel, _, _), texts in
                                                          zip(samples, captions) for text in texts])
    from_jsonl = evaluate(run, tmp_path / "jsonl", "retrieval", jsonl, "--workers", "0")
    from_csv = evaluate(run, tmp_path / "csv", "retrieval", rows)
    assert from_jsonl["counts"] == {"images": 30, "texts": 60, "skipped_unreadable": 0}
    assert from_jsonl["settings"]["protocol"] == "multi-caption"
    assert from_jsonl["metrics"] == pytest.approx(from_csv["metrics"], abs=1e-6)


def test_webdataset_shards_with_cls_labels_and_txt_captions(run, image_folder, tmp_path):
    from datagen import write_shard

    samples = folder_samples(image_folder)
    names = ["sneaker", "t_shirt", "trouser"]  # sorted folder order, as the labels number them
    members = [(f"{n:04d}", {"png": data, "cls": str(names.index(name)).encode(), "txt": f"a {name}.".encode()})
               for n, (_, name, data) in enumerate(samples)]
    members.insert(5, ("bad", {"png": b"\x89PNG\r\n\x1a\nbroken", "cls": b"1", "txt": b"a trouser."}))
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "eval-000.tar", members[:16])
    write_shard(shards / "eval-001.tar", members[16:])
    (tmp_path / "classnames.txt").write_text("sneaker\nt shirt\ntrouser\n")  # clip_benchmark: beside the split
    pattern = str(shards / "eval-{000..001}.tar")
    folder = evaluate(run, tmp_path / "folder", "zeroshot", image_folder, "--templates", "a photo of a {}.")
    zeroshot = evaluate(run, tmp_path / "zs", "zeroshot", pattern, "--templates", "a photo of a {}.")
    assert zeroshot["counts"] == {"images": 30, "classes": 3, "skipped_unreadable": 1}
    assert zeroshot["skipped"] == [f"{pattern}:bad"]
    assert zeroshot["metrics"]["top1"] == folder["metrics"]["top1"]
    retrieval = evaluate(run, tmp_path / "ret", "retrieval", pattern, "--limit", "20")
    # the first 20 samples: 10 sneakers, the corrupt one, 9 t-shirts; one caption per class
    assert retrieval["counts"] == {"images": 19, "texts": 2, "skipped_unreadable": 1}
    assert retrieval["settings"]["protocol"] == "unique-captions"
