"""The model-based recipe steps through the step protocol (clip_score, embedding_dedup, decontaminate,
cluster_balance) and concept_frequency: scores equal to the model's own cosine, exported OpenCLIP directories
scoring as the vlp run does, exact keep sets, the bucketed search against the exact one, and one
``vlp recipe run`` of data_recipes/clip_score.yaml."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vlp
from datagen import encode, write_shard
from vlp.cli import main
from vlp.data import load_default
from vlp.errors import ConfigError
from vlp.export.open_clip import export_open_clip
from vlp.recipes import load_recipe
from vlp.recipes.shards import as_sample
from vlp.recipes.steps.clip_score import ClipScore, ClipScoreConfig
from vlp.recipes.steps.cluster_balance import ClusterBalance, ClusterBalanceConfig
from vlp.recipes.steps.concept_frequency import ConceptFrequency, ConceptFrequencyConfig
from vlp.recipes.steps.decontaminate import Decontaminate, DecontaminateConfig
from vlp.recipes.steps.embedding_dedup import EmbeddingDedup, EmbeddingDedupConfig, near_duplicates
from vlp.recipes.steps.similarity import similar_pairs

REPO = Path(__file__).resolve().parents[1]
FASHION = load_default("val")
DISTINCT_BELOW = 0.99  # the test images' pairwise cosine under the tiny model; copies score above 0.999
COPY_THRESHOLD = 0.995


@pytest.fixture(scope="module")
def models(tiny_run, tmp_path_factory) -> dict:
    """The tiny run, the same model exported as an OpenCLIP directory, and the run loaded."""
    exported = export_open_clip(tiny_run, tmp_path_factory.mktemp("scores") / "open_clip")
    return {"run": str(tiny_run), "local_dir": f"local-dir:{exported}", "loaded": vlp.load(tiny_run, device="cpu")}


@pytest.fixture(scope="module")
def distinct(models) -> list[int]:
    """Fashion-MNIST images that the tiny model keeps apart (pairwise cosine below DISTINCT_BELOW), so that the
    near-duplicates planted among them are the only pairs above COPY_THRESHOLD."""
    embeddings = models["loaded"].embed_images([FASHION.pil(i).convert("RGB") for i in range(200)]).numpy()
    chosen: list[int] = []
    for index in range(200):
        if all(embeddings[index] @ embeddings[other] < DISTINCT_BELOW for other in chosen):
            chosen.append(index)
    assert len(chosen) >= 10, "the tiny model sees too few Fashion-MNIST images as different"
    return chosen[:10]


def image(index: int) -> Image.Image:
    return FASHION.pil(index).convert("RGB")  # 28x28: the tiny model's own size, so vlp and OpenCLIP crop alike


def sample(key: str, picture: Image.Image, caption: str, fmt: str = "PNG", **json_fields):
    members = {"png" if fmt == "PNG" else "jpg": encode(picture, fmt), "txt": caption.encode()}
    if json_fields:
        members["json"] = json.dumps(json_fields).encode()
    return as_sample(key, members)


def decoded(item) -> Image.Image:
    return Image.open(io.BytesIO(item.image_bytes)).convert("RGB")


def model_cosines(loaded, samples, captions: list[str]) -> np.ndarray:
    images = loaded.embed_images([decoded(item) for item in samples]).numpy()
    return (images * loaded.embed_texts(captions).numpy()).sum(axis=1)


def captioned(count: int, offset: int = 0) -> list:
    return [sample(f"s{i:02d}", image(i + offset), FASHION.captions[i + offset]) for i in range(count)]


def test_clip_score_is_the_models_cosine_and_open_clip_scores_the_export_alike(models):
    samples = captioned(12)
    expected = model_cosines(models["loaded"], samples, [FASHION.captions[i] for i in range(12)])
    by_vlp = ClipScore("clip_score", ClipScoreConfig(model=models["run"], batch_size=5)).signatures(samples)
    by_open_clip = ClipScore("clip_score", ClipScoreConfig(model=models["local_dir"])).signatures(samples)
    assert [set(scores) for scores in by_vlp] == [{"clip_score"}] * 12
    np.testing.assert_allclose([s["clip_score"] for s in by_vlp], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose([s["clip_score"] for s in by_open_clip], expected, atol=1e-5, rtol=0)


def test_threshold_and_keep_fraction_keep_exactly_the_best_samples(models):
    signatures = [{"clip_score": score} for score in (0.1, 0.5, 0.3, 0.5, 0.2, 0.4, 0.0, 0.45, 0.35, 0.25)]
    signatures.insert(3, {})  # a sample without a caption to score
    ids = [(0, f"k{i}") for i in range(len(signatures))]
    by_threshold = ClipScore("clip_score", ClipScoreConfig(model=models["run"], threshold=0.35))
    verdicts = by_threshold.decide(ids, signatures)
    assert [i for i, v in enumerate(verdicts) if v.keep] == [1, 4, 6, 8, 9]
    assert {v.reason for v in verdicts if not v.keep} == {"low_clip_score", "missing_caption"}
    assert verdicts[3].reason == "missing_caption" and verdicts[9].scores == {"clip_score": 0.35}
    assert by_threshold.thresholds() == {"clip_score": [0.35]}
    top = ClipScore("clip_score", ClipScoreConfig(model=models["run"], keep_fraction=0.3))
    kept = [i for i, v in enumerate(top.decide(ids, signatures)) if v.keep]
    assert kept == [1, 4, 8]  # round(0.3 * 11) = 3: 0.5 and 0.5, then 0.45
    assert top.thresholds() == {"clip_score": [0.45]}
    tie = ClipScore("clip_score", ClipScoreConfig(model=models["run"], keep_fraction=0.1))
    assert [i for i, v in enumerate(tie.decide(ids, signatures)) if v.keep] == [1]  # of two 0.5s, the first
    scoring_only = ClipScore("clip_score", ClipScoreConfig(model=models["run"]))
    assert all(v.keep for v in scoring_only.decide(ids, signatures))


def test_capfilt_keeps_the_passing_captions_and_drops_a_sample_only_when_none_passes(models):
    texts = ["a photo of a dark sandal", "a patterned shirt", "zebra 123", "a bag", "a light boot"]
    samples = [sample(f"c{i}", image(i), texts[i], recaption=[texts[(i + 1) % 5], texts[(i + 2) % 5]])
               for i in range(5)]
    plain = ClipScore("plain", ClipScoreConfig(model=models["run"], captions=["txt", "recaption"]))
    scores = plain.signatures(samples)
    each = np.array([[s["txt"], s["recaption_0"], s["recaption_1"]] for s in scores])
    np.testing.assert_allclose(each[:, 0], model_cosines(models["loaded"], samples, texts), atol=1e-5, rtol=0)
    np.testing.assert_allclose([s["clip_score"] for s in scores], each.max(axis=1), atol=0, rtol=0)
    threshold = float(np.median(each))
    capfilt = ClipScore("capfilt", ClipScoreConfig(model=models["run"], captions=["txt", "recaption"],
                                                   threshold=threshold, kept_field="kept"))
    verdicts = capfilt.decide([(0, s.key) for s in samples], capfilt.signatures(samples))
    for item, row, verdict in zip(samples, each, verdicts):
        candidates = [item.caption, *item.json["recaption"]]
        passing = [text for text, score in zip(candidates, row) if score >= threshold]
        assert item.json.get("kept", []) == passing
        assert verdict.keep == bool(passing) and (verdict.reason is None or verdict.reason == "low_clip_score")
        if passing:
            assert item.json["caption_sources"]["kept"] == f"capfilt: txt, recaption scoring >= {threshold}"
    assert any(0 < len(item.json.get("kept", [])) < 3 for item in samples)  # some captions went, some stayed


def test_embedding_dedup_drops_near_duplicates_keeping_the_first(models, distinct):
    first, second, third = distinct[:3]
    samples = [sample("a", image(first), "x", "PNG"),
               sample("copy_of_b_first", image(second), "x", "JPEG"),  # a re-encode that comes before its original
               sample("b", image(second), "x", "PNG"),
               sample("c", image(third), "x", "PNG"),
               sample("a_again", image(first), "x", "PNG"),
               *(sample(f"other{i}", image(i), "x") for i in distinct[3:8])]
    step = EmbeddingDedup("embedding_dedup", EmbeddingDedupConfig(model=models["run"], threshold=COPY_THRESHOLD))
    embeddings = step.signatures(samples)
    direct = models["loaded"].embed_images([decoded(item) for item in samples]).numpy()
    np.testing.assert_allclose(embeddings, direct, atol=1e-5, rtol=0)
    verdicts = step.decide([(0, s.key) for s in samples], embeddings)
    dropped = {s.key: v.scores["similarity"] for s, v in zip(samples, verdicts) if not v.keep}
    assert set(dropped) == {"b", "a_again"} and all(score >= COPY_THRESHOLD for score in dropped.values())
    assert {v.reason for v in verdicts if not v.keep} == {"near_duplicate"}


def clustered(count: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around count // 20 centres, a tenth of them near-copies (cosine about 0.99) of an earlier one."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((count // 20, dim))
    vectors = centres[rng.integers(0, len(centres), count)] + 0.5 * rng.standard_normal((count, dim))
    copies = rng.choice(np.arange(1, count), count // 10, replace=False)
    originals = [int(rng.integers(0, copy)) for copy in copies]
    vectors[copies] = vectors[originals] + 0.12 * rng.standard_normal((len(copies), dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def pair_set(pairs) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in zip(pairs.query.tolist(), pairs.match.tolist()) if a != b}


def test_bucketed_search_equals_exact_when_every_bucket_is_probed_and_finds_nearly_all_by_default():
    vectors = clustered(6000, 48, seed=0)
    exact = pair_set(similar_pairs(vectors, vectors, 0.95))
    assert len(exact) > 500
    assert pair_set(similar_pairs(vectors, vectors, 0.95, buckets=16, probes=16)) == exact
    found = pair_set(similar_pairs(vectors, vectors, 0.95, buckets=77, probes=1.3))
    assert found <= exact and len(found) >= 0.97 * len(exact)
    single = pair_set(similar_pairs(vectors, vectors, 0.95, buckets=77, probes=1))
    assert len(single) < len(found)  # the boundary probes are what finds the rest
    kept_exact, _ = near_duplicates(vectors, 0.95, buckets=1)
    kept_bucketed, _ = near_duplicates(vectors, 0.95, buckets=77)
    assert (kept_exact == kept_bucketed).mean() >= 0.99


def test_near_duplicates_walk_in_input_order_against_kept_rows_only():
    base = np.eye(4, dtype=np.float32)
    a, c = base[0], 0.9 * base[0] + np.sqrt(1 - 0.81) * base[1]  # cosine 0.9 apart
    b = (a + c) / np.linalg.norm(a + c)  # about 0.975 from each
    kept, similarity = near_duplicates(np.stack([a, b, c, base[2], base[2]]), 0.95)
    assert kept.tolist() == [True, False, True, True, False]  # c survives: its only match, b, was dropped
    assert similarity[1] == pytest.approx(float(a @ b)) and similarity[4] == pytest.approx(1.0)
    assert np.isnan(similarity[[0, 2, 3]]).all()


def test_decontaminate_removes_exactly_the_eval_duplicates(models, distinct, tmp_path):
    folder = tmp_path / "eval" / "things"  # a class folder, as vlp eval --data reads it
    folder.mkdir(parents=True)
    for name, index in (("x.png", distinct[2]), ("y.png", distinct[5]), ("z.png", distinct[9])):
        image(index).save(folder / name)
    (folder / "broken.png").write_bytes(b"not an image")
    extra = models["loaded"].embed_images([image(distinct[7])]).numpy()
    np.save(tmp_path / "more.npy", extra)
    samples = [sample(f"t{i}", image(index), "x") for i, index in enumerate(distinct[:9])]
    step = Decontaminate("decontaminate", DecontaminateConfig(
        model=models["run"], eval_data=[str(tmp_path / "eval")], eval_embeddings=[str(tmp_path / "more.npy")],
        threshold=COPY_THRESHOLD))
    ids = [(0, s.key) for s in samples]
    verdicts = step.decide(ids, step.signatures(samples))
    assert {s.key for s, v in zip(samples, verdicts) if not v.keep} == {"t2", "t5", "t7"}
    assert {v.reason for v in verdicts if not v.keep} == {"eval_duplicate"}
    assert step.summary(ids, None, verdicts) == {"samples": 9, "eval_duplicates": 3, "eval_images": 4,
                                                 "eval_unreadable": 1, "eval_images_matched": 3}


def test_cluster_balance_caps_each_cluster_by_order_or_score_and_repeats_itself(models):
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:3]
    sizes, members = (5, 3, 1), []
    for centre, size in zip(centres, sizes):
        members += [centre + 0.01 * rng.standard_normal(8).astype(np.float32) for _ in range(size)]
    order = rng.permutation(len(members))
    embeddings = np.stack(members)[order]
    cluster_of_row = np.repeat([0, 1, 2], sizes)[order]
    preference = rng.random(len(members)).astype(np.float32)
    ids = [(0, f"r{i}") for i in range(len(members))]

    def kept_rows(**options) -> list[int]:
        """The rows kept, the preference column as signatures() makes it: the score, or 0 without ``prefer``."""
        signatures = np.hstack([embeddings, preference[:, None] * ("prefer" in options)])
        step = ClusterBalance("cluster_balance", ClusterBalanceConfig(model=models["run"], clusters=3, **options))
        verdicts = step.decide(ids, signatures)
        again = ClusterBalance("cluster_balance", ClusterBalanceConfig(model=models["run"], clusters=3, **options))
        assert again.decide(ids, signatures) == verdicts
        assert sorted(step.found["sizes_before"]) == [1, 3, 5]
        return [i for i, verdict in enumerate(verdicts) if verdict.keep]

    first_two = [i for c in range(3) for i in np.flatnonzero(cluster_of_row == c)[:2]]
    assert kept_rows(per_cluster=2) == sorted(first_two)
    best_two = [i for c in range(3) for i in sorted(np.flatnonzero(cluster_of_row == c),
                                                    key=lambda i: -preference[i])[:2]]
    assert kept_rows(per_cluster=2, prefer="clip_score.clip_score") == sorted(best_two)
    assert len(kept_rows(total=7)) == 7  # cap 3: 3 + 3 + 1


def test_cluster_balance_reads_its_preference_from_earlier_scores(models, distinct):
    samples = [sample(f"p{i}", image(index), "x") for i, index in enumerate(distinct[:6])]
    for rank, item in enumerate(samples[:5]):
        item.json.setdefault("scores", {})["clip_score"] = {"clip_score": rank / 10}
    step = ClusterBalance("cluster_balance", ClusterBalanceConfig(model=models["run"], clusters=2, per_cluster=2,
                                                                  prefer="clip_score.clip_score"))
    signatures = step.signatures(samples)
    assert signatures.shape == (6, 33)
    np.testing.assert_allclose(signatures[:5, -1], [0, 0.1, 0.2, 0.3, 0.4], atol=1e-7)
    assert np.isnan(signatures[5, -1])
    verdicts = step.decide([(0, s.key) for s in samples], signatures)
    sizes = np.bincount([int(v.scores["cluster"]) for v in verdicts if v.keep], minlength=2)
    assert sizes.max() <= 2 and step.found["missing_preference"] == 1


def test_concept_frequency_counts_whole_words_and_synonyms(tmp_path):
    captions = ["Sneakers on a trainer's shelf", "a sneaker-like shoe", "two trainers", "A T-shirt, a t shirt",
                "sneakerhead", "a dress"]
    samples = [sample(f"w{i}", image(i), text, recaption=["a white sneaker"] if i == 5 else []) for i, text in
               enumerate(captions)]
    concepts = tmp_path / "concepts.yaml"
    concepts.write_text("sneaker: [sneakers, trainer]\nt-shirt: [tee]\ndress: []\nanorak: [parka]\n")
    step = ConceptFrequency("concept_frequency", ConceptFrequencyConfig(concepts=str(concepts),
                                                                        captions=["txt", "recaption"]))
    signatures = step.signatures(samples)
    summary = step.summary([(0, s.key) for s in samples], signatures, step.decide([], signatures))
    sneaker = summary["concepts"]["sneaker"]
    assert sneaker == {"count": 3, "synonyms": {"sneaker": 2, "sneakers": 1, "trainer": 1},
                       "most_frequent_synonym": "sneaker"}  # "trainers" and "sneakerhead" are other words
    assert summary["concepts"]["t-shirt"]["count"] == 1 and summary["concepts"]["dress"]["count"] == 1
    assert list(summary["concepts"]) == ["sneaker", "dress", "t-shirt", "anorak"]
    assert summary["never_mentioned"] == ["anorak"] and summary["long_tail"] == ["dress", "t-shirt"]
    inline = ConceptFrequency("c", ConceptFrequencyConfig(concepts={"dress": ["gown"]}))
    assert inline.summary([], inline.signatures(samples), [])["concepts"]["dress"]["count"] == 1


@pytest.mark.parametrize("step, options, message", [
    (ClipScore, {"model": None}, "config key 'model' is not set"),
    (ClipScore, {"model": "/no/such/run"}, "config key 'model': no such run or checkpoint: /no/such/run"),
    (ClipScore, {"model": "local-dir:/tmp"}, "config key 'model': /tmp is not an OpenCLIP model directory"),
    (ClipScore, {"threshold": 0.3, "keep_fraction": 0.5}, "set 'threshold' or 'keep_fraction', not both"),
    (ClipScore, {"keep_fraction": 1.5}, "config key 'keep_fraction' must be in"),
    (ClipScore, {"keep_fraction": 0.5, "kept_field": "kept"}, "config key 'kept_field' needs 'threshold'"),
    (EmbeddingDedup, {"probes": 0.5}, "config key 'probes' must be at least 1"),
    (EmbeddingDedup, {"threshold": 2.0}, "config key 'threshold' is a cosine similarity"),
    (Decontaminate, {}, "set 'eval_data'"),
    (Decontaminate, {"eval_data": ["/no/such/eval"]}, "config key 'eval_data': not found: /no/such/eval"),
    (ClusterBalance, {"per_cluster": 3, "total": 9}, "set one of 'per_cluster' and 'total'"),
    (ClusterBalance, {"per_cluster": 3, "prefer": "clip_score"}, "config key 'prefer' names a score as STEP.SCORE"),
])
def test_bad_options_fail_in_one_line_naming_the_key(models, step, options, message):
    with pytest.raises(ConfigError, match=message) as raised:
        step("s", step.Config(**{"model": models["run"], **options}))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("concepts, message", [
    (["sneaker"], "config key 'concepts' must be a mapping"),
    ({"sneaker": [3]}, "config key 'concepts.sneaker': synonyms must be a list of words"),
    ("/no/such/concepts.yaml", "config key 'concepts': file not found"),
])
def test_bad_concepts_fail_naming_the_key(concepts, message):
    with pytest.raises(ConfigError, match=message):
        ConceptFrequency("c", ConceptFrequencyConfig(concepts=concepts))


def test_clip_score_recipe_runs_end_to_end(models, tmp_path, capsys):
    write_shard(tmp_path / "in-000.tar", [(f"k{i:02d}", {"png": encode(image(i), "PNG"),
                                                          "txt": FASHION.captions[i].encode()}) for i in range(10)])
    out = tmp_path / "out"
    code = main(["recipe", "run", str(REPO / "data_recipes/clip_score.yaml"), f"input={tmp_path}/in-000.tar",
                 f"output={out}", f"steps.clip_score.model={models['run']}", "workers=0"])
    assert code == 0, capsys.readouterr().err
    with tarfile.open(next(out.glob("*.tar"))) as tar:
        kept = {Path(m.name).stem: json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")}
    scores = model_cosines(models["loaded"], captioned(10), [FASHION.captions[i] for i in range(10)])
    assert sorted(kept) == sorted(f"k{i:02d}" for i in np.argsort(-scores)[:3])
    for key, document in kept.items():
        assert document["scores"]["clip_score"]["clip_score"] == pytest.approx(scores[int(key[1:])], abs=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert next(r for r in report["steps"] if r["name"] == "clip_score")["dropped"] == {"low_clip_score": 7}
    models_of = {"balanced": ("embedding_dedup", "clip_score", "cluster_balance"), "capfilt": ("clip_score",)}
    for name, steps in models_of.items():  # the other shipped recipes load once their models are set
        overrides = [f"steps.{step}.model={models['run']}" for step in steps]
        overrides += [f"steps.recaption.model={tmp_path}"] if name == "capfilt" else []
        recipe = load_recipe(REPO / f"data_recipes/{name}.yaml", [f"input={tmp_path}/in-000.tar", "output=x",
                                                                  *overrides])
        assert recipe.steps[-1].kind == "global"


def test_balanced_and_capfilt_steps_run_through_the_engine(models, distinct, tmp_path, capsys):
    """Across stages: cluster_balance reads the clip scores the stage before wrote, and the captions CapFilt keeps
    reach the output shards."""
    texts = [FASHION.captions[i] for i in distinct]
    members = [(f"k{i:02d}", {"png": encode(image(index), "PNG"), "txt": texts[i].encode(),
                              "json": json.dumps({"recaption": [texts[(i + 1) % 10]]}).encode()})
               for i, index in enumerate(distinct)]
    members.append(("k10_copy", {**members[4][1], "txt": b"the fifth image again"}))
    write_shard(tmp_path / "in-000.tar", members)
    run = ["recipe", "run", str(REPO / "data_recipes/balanced.yaml"), f"input={tmp_path}/in-000.tar",
           f"output={tmp_path / 'balanced'}", "workers=0", "steps.cluster_balance.clusters=3",
           "steps.cluster_balance.per_cluster=2", f"steps.embedding_dedup.threshold={COPY_THRESHOLD}",
           *(f"steps.{step}.model={models['run']}" for step in ("embedding_dedup", "clip_score", "cluster_balance"))]
    assert main(run) == 0, capsys.readouterr().err
    records = [json.loads(line) for path in sorted((tmp_path / "balanced").glob("decisions/stage*/*.jsonl"))
               for line in path.open()]
    dropped = {r["key"]: (r["step"], r["reason"]) for r in records if not r["kept"]}
    assert dropped.pop("k10_copy") == ("exact_dedup", "duplicate")
    assert len(dropped) >= 4 and set(dropped.values()) == {("cluster_balance", "cluster_cap")}  # 3 clusters, cap 2
    balanced = [r for r in records if "cluster_balance" in r["scores"]]
    score = {r["key"]: r["scores"]["clip_score"]["clip_score"] for r in records if "clip_score" in r["scores"]}
    for cluster in {r["scores"]["cluster_balance"]["cluster"] for r in balanced}:
        mine = sorted((r for r in balanced if r["scores"]["cluster_balance"]["cluster"] == cluster),
                      key=lambda r: -score[r["key"]])
        assert [r["kept"] for r in mine] == [True] * min(2, len(mine)) + [False] * (len(mine) - 2)

    recipe = tmp_path / "capfilt.yaml"
    recipe.write_text(f"input: null\noutput: null\nsteps:\n  - clip_score: {{model: {models['run']}, captions: "
                      f"[txt, recaption], threshold: {np.median(list(score.values()))}, kept_field: capfilt}}\n")
    assert main(["recipe", "run", str(recipe), f"input={tmp_path}/in-000.tar", f"output={tmp_path / 'capfilt'}",
                 "workers=0"]) == 0, capsys.readouterr().err
    with tarfile.open(next((tmp_path / "capfilt").glob("*.tar"))) as tar:
        documents = [json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")]
    assert documents and all(doc["capfilt"] and doc["caption_sources"]["capfilt"] for doc in documents)
