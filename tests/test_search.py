"""Image search: the faiss gallery index (exact and IVF, saved and loaded), ``LoadedModel.search``, and the
``vlp classify`` / ``vlp search`` / ``vlp index build`` commands."""
import dataclasses
from pathlib import Path

import pytest

import vlp
from vlp.cli import main
from vlp.config import ConfigError
from vlp.data import load_default
from vlp.search import ImageIndex, build_index


N_IMAGES = 40
QUERIES = ["a photo of a dress", "a photo of a sneaker", "a bag", "trouser"]


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return vlp.load(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """40 PNGs in two nested folders, plus one corrupt .jpg and one non-image file that must be ignored."""
    folder = tmp_path_factory.mktemp("gallery")
    data = load_default("val")
    for i in range(N_IMAGES):
        sub = folder / ("a" if i % 2 else "b/nested")
        sub.mkdir(parents=True, exist_ok=True)
        data.pil(i).save(sub / f"{i:03d}.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def exact(loaded, gallery):
    return build_index(loaded, gallery)


def brute_force(loaded, index, texts, top_k):
    """Reference ranking: cosine similarity of text and image embeddings, sorted with torch."""
    images = loaded.embed_images([Path(p) for p in index.paths])
    scores = loaded.embed_texts(texts) @ images.T
    top = scores.topk(top_k, dim=1)
    return [[(index.paths[i], s) for s, i in zip(vals.tolist(), idx.tolist())] for vals, idx in zip(*top)]


def assert_same(results, expected):
    for got, want in zip(results, expected, strict=True):
        assert [p for p, _ in got] == [p for p, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)


def test_build_counts_indexed_and_skipped(exact, gallery):
    assert len(exact.paths) == exact.index.ntotal == N_IMAGES
    assert [p.rsplit("/", 1)[-1] for p in exact.skipped] == ["corrupt.jpg"]
    assert exact.nlist is None and exact.kind == "exact"


def test_exact_search_equals_brute_force(loaded, exact):
    results = exact.search(loaded.embed_texts(QUERIES), top_k=7)
    assert_same(results, brute_force(loaded, exact, QUERIES, 7))


def test_save_load_round_trip(loaded, exact, tmp_path):
    out = exact.save(tmp_path / "idx")
    again = ImageIndex.load(out)
    assert (again.paths, again.checkpoint, again.dim, again.skipped) == (exact.paths, exact.checkpoint, exact.dim,
                                                                         exact.skipped)
    queries = loaded.embed_texts(QUERIES)
    assert again.search(queries, 10) == exact.search(queries, 10)
    exact.save(out)  # overwriting an index directory replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no staging directories left behind


def test_save_refuses_to_overwrite_other_directories(exact, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an image index"):
        exact.save(tmp_path)


def test_ivf_with_all_clusters_probed_equals_exact(loaded, gallery, exact):
    ivf = build_index(loaded, gallery, nlist=4, nprobe=4)
    assert ivf.nlist == 4
    queries = loaded.embed_texts(QUERIES)
    assert_same(ivf.search(queries, 10), exact.search(queries, 10))
    assert all(len(r) <= 10 for r in ivf.search(queries, 10, nprobe=1))  # approximate, may return fewer
    with pytest.raises(ConfigError, match="nlist"):
        build_index(loaded, gallery, nlist=N_IMAGES + 1)


def test_loaded_model_search_text_and_image(loaded, gallery, exact, tmp_path):
    by_text = loaded.search("a photo of a dress", exact, top_k=5)
    assert_same([by_text], brute_force(loaded, exact, ["a photo of a dress"], 5))
    saved = exact.save(tmp_path / "idx")
    assert loaded.search("a photo of a dress", saved, top_k=5) == by_text
    assert_same([loaded.search("a photo of a dress", gallery, top_k=5)], [by_text])  # folder: indexed on the fly
    query = Path(exact.paths[3])
    by_image = loaded.search(query, exact, top_k=3)
    assert by_image[0][0] == str(query) and by_image[0][1] == pytest.approx(1.0, abs=1e-5)


def test_dim_mismatch_is_one_line(loaded, exact):
    other = dataclasses.replace(exact, dim=exact.dim + 1)
    with pytest.raises(ConfigError) as err:
        loaded.search("a dress", other)
    assert "\n" not in str(err.value) and f"dim {exact.dim + 1}" in str(err.value)


def test_cli_index_build_search_classify(tiny_run, gallery, tmp_path, capsys, loaded, exact):
    out = tmp_path / "idx"
    assert main(["index", "build", "--model", str(tiny_run), "--images", str(gallery), "--output", str(out)]) == 0
    assert f"({N_IMAGES} images indexed, 1 skipped; exact" in capsys.readouterr().out

    assert main(["search", "--model", str(tiny_run), "--gallery", str(out), "--text", QUERIES[0], "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = brute_force(loaded, exact, QUERIES[:1], 3)[0]
    assert lines[0].split() == ["rank", "score", "image"] and len(lines) == 4
    assert [line.split()[2] for line in lines[1:]] == [p for p, _ in expected]

    saved = tmp_path / "from_folder"
    assert main(["search", "--model", str(tiny_run), "--gallery", str(gallery), "--image", exact.paths[0],
                 "--save-index", str(saved)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[2] == exact.paths[0] and lines[-1].startswith(f"index: {saved}")
    assert ImageIndex.load(saved).paths == exact.paths

    images = exact.paths[:2]
    assert main(["classify", *images, "--labels", "dress, bag,sneaker", "--model", str(tiny_run),
                 "--templates", "simple", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("image") and len(lines) == 3
    for line, path, top in zip(lines[1:], images, loaded.classify([Path(p) for p in images],
                                                                  ["dress", "bag", "sneaker"], "simple", top_k=2)):
        assert line.split() == [path] + [cell for label, p in top for cell in (label, f"{p:.3f}")]


def test_cli_errors_are_one_line(tiny_run, gallery, tmp_path, capsys, exact):
    out = exact.save(tmp_path / "idx")
    other = dataclasses.replace(ImageIndex.load(out), dim=exact.dim + 1)
    other.save(out)
    assert main(["search", "--model", str(tiny_run), "--gallery", str(out), "--text", "a dress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlp search: error: index embedding dim") and err.count("\n") == 1
    assert main(["classify", str(gallery / "corrupt.jpg"), "--labels", "a,b", "--model", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlp classify: error: cannot read image") and err.count("\n") == 1
    assert main(["index", "build", "--model", str(tiny_run), "--images", str(tmp_path / "none"), "--output",
                 str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.startswith("vlp index: error: image folder not found")
