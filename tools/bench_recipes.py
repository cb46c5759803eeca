"""Throughput of the data recipes (docs/recipes.md, issue 6): the ``clip_score`` step against the model's raw
batched inference, ``near_duplicates`` on 1M 512-d embeddings, and every shipped recipe end to end.

    python tools/bench_recipes.py                       # all three parts: 4-5 minutes on 2 cores, after the
                                                        # shards and models are made (2 minutes, once)
    python tools/bench_recipes.py --images 500 --skip-1m
    python tools/bench_recipes.py --images 96 --score-models vit_b32 --trials 3 --skip-1m --skip-recipes
    python tools/bench_recipes.py --profile             # cProfile of one clip_score recipe run, main process

**Shards** (made once, cached under ``--work``): ``--images`` synthetic photos (``tools/bench_data.synthetic_photo``,
shorter side 256-640 px, JPEG q90) with random-word captions in img2dataset's ``.jpg/.txt/.json`` layout, with
planted samples for the filters to find: exact copies and resized re-encodes of earlier images, small images, one-word
and French captions (``PLANTED``).

**Models** (random init after one training step, made once): ``tiny224`` is configs/tiny.yaml with a 224 px input
(patches of 32): inference is cheap, so decoding and the pipeline dominate, as when a GPU runs the model.
``vit_b32`` is configs/vit_b32.yaml (151 M parameters): on a CPU inference dominates. The caption recipes get a tiny
random BLIP (image-to-text) and GPT-2 (text generation), built as tests/test_recipe_captions.py builds them.

1. **clip_score step vs raw inference**, on the same images, interleaved trials, medians:
   - raw: the JPEG bytes and captions in memory; per batch of ``--batch-size``, decode (JPEG draft to the model's
     input size, as the step's default ``fast_decode``) and the model's eval preprocess on a pool of one thread per
     core, then ``encode_image``, ``encode_text`` and the cosine under ``torch.inference_mode``.
   - step: ``run_recipe`` of data_recipes/clip_score.yaml in this process (keep_fraction 0.3) on the tar shards,
     the same batch size and torch threads, the engine's default workers (``--workers``): reading, the read
     check, scoring, the stage shards, the decision, re-sharding the kept 30%, the report. The model is loaded
     before the clock starts, as raw's is. The report (histograms, example grids: a fixed cost per run) is timed
     apart, and the ratio line leaves it out; the whole run's rate is printed beside it.
2. **Dedup**: ``near_duplicates(embeddings, threshold=0.95)`` with its defaults on ``--dedup-rows`` unit vectors
   around rows/20 centres (as tests/test_recipe_scores.py's ``clustered``), 2% of them near-copies (cosine
   0.966-0.996) of an earlier non-copy row; in a child process, so that its peak RSS is its own. Recall of the
   planted copies, rows dropped that were not planted, and on the first ``--recall-rows`` rows the default
   (bucketed) search against the exact one (``buckets=1``).
3. **Every recipe** in data_recipes/ once through ``run_recipe``, model loading and report included, with the
   models above (and two thresholds set for the random CLIP model: ``recipe_overrides``); samples/s over the input
   samples, and what was kept and dropped. capfilt and laclip_rewrite, whose cost is their text generator's, run
   on a set of ``--generate-images`` samples made the same way.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "tools"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from bench_data import WORDS, synthetic_photo  # noqa: E402
from bench_train import machine_line  # noqa: E402

RECIPES = REPO / "data_recipes"
# share of samples of each planted kind; the rest are plain photos with English captions
PLANTED = {"exact_copy": 0.03, "resized_copy": 0.03, "small_image": 0.03, "one_word_caption": 0.03,
           "french_caption": 0.02}
FRENCH = ("une photo de la petite maison rouge avec un chien sur la plage au coucher du soleil dans le jardin "
          "pres de la riviere et des arbres en hiver").split()
CLIP_MODELS = {"tiny224": ("configs/tiny.yaml", ["model.image.image_size=224", "model.image.kwargs.patch_size=32"]),
               "vit_b32": ("configs/vit_b32.yaml", [])}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/vlp_bench_recipes", help="cache of shards and models; run outputs")
    p.add_argument("--images", type=int, default=1000, help="samples in the shards")
    p.add_argument("--shards", type=int, default=1, help="tar shards (img2dataset writes 10,000 samples each)")
    p.add_argument("--workers", type=int, default=None, help="recipe workers (default: the engine's, min(cores, 4))")
    p.add_argument("--batch-size", type=int, default=256, help="clip_score's batch (its default), raw's too")
    p.add_argument("--score-models", nargs="+", default=["tiny224"], choices=sorted(CLIP_MODELS))
    p.add_argument("--score-shards", type=int, default=None, help="shards for part 1 (default: all)")
    p.add_argument("--trials", type=int, default=5, help="timed trials of each side in part 1 (median reported)")
    p.add_argument("--skip-score", action="store_true", help="skip part 1")
    p.add_argument("--skip-1m", action="store_true", help="skip part 2")
    p.add_argument("--skip-recipes", action="store_true", help="skip part 3")
    p.add_argument("--generate-images", type=int, default=96,
                   help="samples for the recipes with a text generator (capfilt, laclip_rewrite), in 1 shard")
    p.add_argument("--dedup-rows", type=int, default=1_000_000)
    p.add_argument("--dedup-dim", type=int, default=512)
    p.add_argument("--recall-rows", type=int, default=50_000, help="rows searched exactly too (0: skip)")
    p.add_argument("--profile", action="store_true", help="instead: cProfile one clip_score recipe run")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ the shards

def caption(rng: np.random.Generator, kind: str) -> str:
    if kind == "one_word_caption":
        return str(rng.choice(WORDS))
    words = FRENCH if kind == "french_caption" else WORDS
    return " ".join(rng.choice(words, int(rng.integers(5, 21))))


def jpeg(image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def image_bytes(rng: np.random.Generator, kind: str, originals: list[bytes]) -> bytes:
    """A photo, or for a copy kind an earlier photo's bytes (exact) or a 90% resize of it re-encoded at q80."""
    from PIL import Image

    if kind in ("exact_copy", "resized_copy") and originals:
        source = originals[int(rng.integers(len(originals)))]
        if kind == "exact_copy":
            return source
        image = Image.open(io.BytesIO(source))
        return jpeg(image.resize((image.width * 9 // 10, image.height * 9 // 10), Image.BICUBIC), 80)
    short = int(rng.integers(100, 200) if kind == "small_image" else rng.integers(256, 641))
    long = int(round(short * math.exp(rng.uniform(0, math.log(1.78)))))
    size = (short, long) if rng.random() < 0.25 else (long, short)
    data = jpeg(synthetic_photo(rng, *size), 90)
    if kind != "small_image":
        originals.append(data)
    return data


def make_shards(work: Path, images: int, shards: int, seed: int) -> tuple[list[str], dict]:
    """The cached shards for these settings (written if missing): their paths, and the planted kinds' counts."""
    from vlp.recipes.shards import ShardWriter

    folder = work / f"shards_{images}x{shards}_seed{seed}"
    paths = [str(folder / f"{shard:05d}.tar") for shard in range(shards)]
    meta = folder / "bench_meta.json"
    if meta.is_file():
        return paths, json.loads(meta.read_text())
    print(f"writing {images} samples in {shards} shards to {folder} ...", flush=True)
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["photo", *PLANTED], images, p=[1 - sum(PLANTED.values()), *PLANTED.values()])
    originals: list[bytes] = []
    sizes = {}
    for shard, part in enumerate(np.array_split(np.arange(images), shards)):
        with ShardWriter(folder / f"{shard:05d}.tar") as writer:
            for index in part.tolist():
                text = caption(rng, kinds[index])
                writer.add(f"{index:08d}", {"jpg": image_bytes(rng, kinds[index], originals), "txt": text.encode(),
                                            "json": json.dumps({"caption": text, "kind": kinds[index]}).encode()})
        sizes[f"{shard:05d}.tar"] = len(part)
    (folder / "sizes.json").write_text(json.dumps(sizes))
    counts = {kind: int((kinds == kind).sum()) for kind in ["photo", *PLANTED]}
    meta.write_text(json.dumps(counts))
    return paths, counts


def input_spec(paths: list[str]) -> str:
    """The recipe ``input`` naming these shards."""
    return "::".join(paths)


# ------------------------------------------------------------------------------------------------ the models

def clip_run(work: Path, name: str) -> Path:
    """A vlp run of ``CLIP_MODELS[name]`` after one training step (random weights: the cost is the same)."""
    from vlp.config import load_config
    from vlp.train.checkpoint import latest_checkpoint
    from vlp.train.loop import train

    run = work / f"model_{name}"
    if latest_checkpoint(run) is None:
        config, overrides = CLIP_MODELS[name]
        shutil.rmtree(run, ignore_errors=True)
        train(load_config(REPO / config, [*overrides, f"run_dir={run}", "train.steps=1", "data.val=null",
                                          "data.batch_size=8", "data.num_workers=0", "train.trackers=[]"]))
    return run


def caption_models(work: Path) -> dict[str, str]:
    """Random tiny HF models, made once: a BLIP captioner and a GPT-2, with tokenizers of this tool's words."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_recipe_captions import byte_level_tokenizer, gpt2_config, save_tiny_blip
    from transformers import GPT2LMHeadModel

    from vlp.recipes.steps.rewrite_llm import LACLIP_PROMPT

    captioner, rewriter = work / "hf_blip", work / "hf_gpt2"
    if not (captioner / "config.json").is_file():
        save_tiny_blip(captioner, sorted({*WORDS, *FRENCH}))
    if not (rewriter / "config.json").is_file():
        corpus = [" ".join(WORDS[i:i + 12]) for i in range(0, len(WORDS), 6)] + [LACLIP_PROMPT]
        tokenizer = byte_level_tokenizer(rewriter, corpus)
        torch.manual_seed(0)
        GPT2LMHeadModel(gpt2_config(len(tokenizer))).save_pretrained(rewriter)
    return {"captioner": str(captioner), "rewriter": str(rewriter)}


# ------------------------------------------------------------------------------- part 1: clip_score vs raw

def memory_samples(paths: list[str]) -> tuple[list[bytes], list[str]]:
    """Every sample's JPEG bytes and caption, read once, for the raw loop."""
    from vlp.recipes.shards import read_members

    images, captions = [], []
    for path in paths:
        for key, members in read_members(path):
            images.append(members["jpg"])
            captions.append(members["txt"].decode())
    return images, captions


class RawInference:
    """(a) decode + preprocess on one thread per core, then both towers and the cosine, batch after batch."""

    name = "raw inference"

    def __init__(self, run: Path, paths: list[str], batch_size: int):
        import vlp
        from vlp.recipes.steps.embedding import input_size
        from vlp.recipes.steps.similarity import cores

        self.loaded = vlp.load(run, "cpu")
        self.draft = input_size(self.loaded.model.visual)
        self.images, self.captions = memory_samples(paths)
        self.batch_size = batch_size
        self.pool = ThreadPoolExecutor(cores())

    def pixels(self, data: bytes) -> torch.Tensor:
        from vlp.data.decode import decode_image
        from vlp.recipes.sample import MAX_PIXELS

        return self.loaded.preprocess(decode_image(data, MAX_PIXELS, self.draft))

    def trial(self) -> float:
        model, tokenizer, count = self.loaded.model, self.loaded.tokenizer, len(self.images)
        start = time.perf_counter()
        for first in range(0, count, self.batch_size):
            pixels = torch.stack(list(self.pool.map(self.pixels, self.images[first:first + self.batch_size])))
            with torch.inference_mode():
                images = model.encode_image(pixels)
                texts = model.encode_text(tokenizer(self.captions[first:first + self.batch_size]))
                (images * texts).sum(dim=1).tolist()
        return count / (time.perf_counter() - start)


@contextlib.contextmanager
def timed_calls(module, names: list[str]):
    """Seconds spent in each of ``module``'s functions ``names`` while the block runs (a dict, filled in)."""
    spent = dict.fromkeys(names, 0.0)
    originals = {name: getattr(module, name) for name in names}

    def timed(name, function):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
        return call

    for name, function in originals.items():
        setattr(module, name, timed(name, function))
    try:
        yield spent
    finally:
        for name, function in originals.items():
            setattr(module, name, function)


def recipe_run(name: str, paths: list[str], output: Path, overrides: list[str], workers: int | None):
    """The recipe loaded with its input, a fresh output directory and the overrides."""
    from vlp.recipes import load_recipe

    shutil.rmtree(output, ignore_errors=True)
    settings = [f"input={input_spec(paths)}", f"output={output}", *overrides]
    return load_recipe(RECIPES / f"{name}.yaml", settings + ([] if workers is None else [f"workers={workers}"]))


def clip_score_recipe(run: Path, paths: list[str], args):
    """data_recipes/clip_score.yaml on ``paths`` with the model at ``run``, the model loaded now."""
    recipe = recipe_run("clip_score", paths, Path(args.work) / "out_score", [
        f"steps.clip_score.model={run}", f"steps.clip_score.batch_size={args.batch_size}"], args.workers)
    recipe.steps[0].encoder  # noqa: B018 (the property loads the model)
    return recipe


class ClipScoreRecipe:
    """(b) data_recipes/clip_score.yaml through the engine, the model loaded before the clock starts."""

    name = "clip_score recipe"

    def __init__(self, run: Path, paths: list[str], count: int, args):
        self.run, self.paths, self.count, self.args = run, paths, count, args
        self.whole: list[float] = []  # images/s of the whole run, report included

    def trial(self) -> float:
        from vlp.recipes import runner

        recipe = clip_score_recipe(self.run, self.paths, self.args)
        with timed_calls(runner, ["write_report"]) as spent:
            start = time.perf_counter()
            runner.run_recipe(recipe)
            seconds = time.perf_counter() - start
        self.whole.append(self.count / seconds)
        return self.count / (seconds - spent["write_report"])


def interleaved(sides: list, trials: int) -> dict[str, list[float]]:
    """One untimed warm-up of each side, then ``trials`` of each in a rotated order."""
    for side in sides:
        side.trial()
    rates: dict[str, list[float]] = {side.name: [] for side in sides}
    for round_ in range(trials):
        for side in sides[round_ % len(sides):] + sides[:round_ % len(sides)]:
            rates[side.name].append(side.trial())
        print(f"  trial {round_ + 1}/{trials}: " + ", ".join(f"{n} {r[-1]:.1f}" for n, r in rates.items())
              + " images/s", flush=True)
    return rates


def compare_clip_score(args, paths: list[str], model: str) -> dict:
    run = clip_run(Path(args.work), model)
    paths = paths[:args.score_shards]
    raw = RawInference(run, paths, args.batch_size)
    step = ClipScoreRecipe(run, paths, len(raw.images), args)
    parameters = sum(p.numel() for p in raw.loaded.model.parameters())
    print(f"\n== clip_score step vs raw inference: {model} ({parameters / 1e6:.2f} M parameters, {raw.draft} px), "
          f"{step.count} images in {len(paths)} shards, batch {args.batch_size}, {torch.get_num_threads()} torch "
          f"threads, load {load_average()} ==", flush=True)
    rates = interleaved([raw, step], args.trials)
    result = {name: statistics.median(values) for name, values in rates.items()}
    result.update(model=model, images=step.count, whole_run=statistics.median(step.whole), rates=rates,
                  ratio=result[step.name] / result[raw.name])
    return result


# ---------------------------------------------------------------------------------------- part 2: 1M dedup

def clustered_with_copies(rows: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors [rows, dim] float32 around rows/20 centres, the rows that are planted near-copies), built in
    blocks to keep memory near the array's own size."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(rows // 20, 1), dim), dtype=np.float32)
    vectors = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 65536):
        block = vectors[start:start + 65536]
        block[:] = centres[rng.integers(0, len(centres), len(block))]
        block += 0.5 * rng.standard_normal(block.shape, dtype=np.float32)
    copies = np.sort(rng.choice(np.arange(1, rows), rows // 50, replace=False))
    plain = np.setdiff1d(np.arange(rows), copies)
    below = np.searchsorted(plain, copies)  # plain rows before each copy (at least row 0)
    originals = plain[(rng.random(len(copies)) * below).astype(np.int64)]
    for start in range(0, len(copies), 65536):  # noise of 0.1-0.3 per dimension: cosine 0.966-0.996 at 512-d
        part = slice(start, start + 65536)
        scale = rng.uniform(0.1, 0.3, (len(copies[part]), 1)).astype(np.float32)
        vectors[copies[part]] = vectors[originals[part]] + scale * rng.standard_normal(
            (len(copies[part]), dim), dtype=np.float32)
    for start in range(0, rows, 65536):
        block = vectors[start:start + 65536]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return vectors, copies


def dedup_child(rows: int, dim: int, recall_rows: int, seed: int) -> dict:
    """Part 2 in a fresh process, so that the peak RSS is the dedup's own."""
    from vlp.recipes.steps.embedding_dedup import near_duplicates

    def peak_gib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20

    start = time.perf_counter()
    vectors, copies = clustered_with_copies(rows, dim, seed)
    made, rss_before = time.perf_counter() - start, peak_gib()
    start = time.perf_counter()
    kept, _ = near_duplicates(vectors, threshold=0.95)
    seconds = time.perf_counter() - start
    planted = np.zeros(rows, dtype=bool)
    planted[copies] = True
    result = {"rows": rows, "dim": dim, "generate_s": made, "seconds": seconds, "copies": len(copies),
              "recall": float((~kept[copies]).mean()), "other_dropped": int((~kept & ~planted).sum()),
              "peak_rss_gib_before": rss_before, "peak_rss_gib": peak_gib()}
    if recall_rows:
        subset = vectors[:recall_rows]
        start = time.perf_counter()
        bucketed, _ = near_duplicates(subset, threshold=0.95)
        result["subset_bucketed_s"] = time.perf_counter() - start
        start = time.perf_counter()
        exact, _ = near_duplicates(subset, threshold=0.95, buckets=1)
        result["subset_exact_s"] = time.perf_counter() - start
        result.update(subset_rows=recall_rows, subset_exact_dropped=int((~exact).sum()),
                      subset_recall=float((~bucketed[~exact]).mean()),
                      subset_agreement=float((bucketed == exact).mean()))
    return result


def bench_dedup(args) -> dict:
    print(f"\n== near_duplicates on {args.dedup_rows} x {args.dedup_dim} (child process), load {load_average()} ==",
          flush=True)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(dedup_child, (args.dedup_rows, args.dedup_dim, args.recall_rows, args.seed))
    print(f"  {json.dumps(result)}", flush=True)
    return result


# ------------------------------------------------------------------------------------ part 3: every recipe

GENERATING = ("capfilt", "laclip_rewrite")  # recipes whose cost is a text generator's: run on fewer images


def recipe_overrides(name: str, models: dict[str, str], images: int) -> list[str] | None:
    """The models each shipped recipe needs (None: a recipe this tool does not know). The random CLIP model sees
    two different photos here as 0.93-0.9995 alike (1st to 99.9th percentile) and scores captions between -0.27
    and 0.18, so two thresholds are set for it: embedding_dedup's to 0.99995, which separates the planted copies
    from the rest as a trained model's 0.95 would, and capfilt's to 0.0 (0.28 would drop every sample)."""
    clusters = max(round(math.sqrt(images)), 1)
    clip = models["clip"]
    return {
        "datacomp_basic": [], "dedup": [],
        "clip_score": [f"steps.clip_score.model={clip}"],
        # clusters as the recipe's comment advises (about sqrt(samples)); a cap at twice the mean cluster size
        "balanced": [f"steps.{step}.model={clip}" for step in ("embedding_dedup", "clip_score", "cluster_balance")]
                    + ["steps.embedding_dedup.threshold=0.99995", f"steps.cluster_balance.clusters={clusters}",
                       f"steps.cluster_balance.per_cluster={2 * images // clusters}"],
        "capfilt": [f"steps.recaption.model={models['captioner']}", f"steps.clip_score.model={clip}",
                    "steps.clip_score.threshold=0.0"],
        "laclip_rewrite": [f"steps.rewrite_llm.model={models['rewriter']}"],
    }.get(name)


def drop_summary(report: dict) -> str:
    parts = [f"{row['name']}:{reason} {count}" for row in report["steps"] for reason, count in row["dropped"].items()]
    return ", ".join(parts) or "none"


def run_each_recipe(name: str, paths: list[str], models: dict[str, str], args) -> dict:
    from vlp.recipes import runner

    overrides = recipe_overrides(name, models, args.images)
    if overrides is None:
        return {"recipe": name, "skipped": "no models known for it"}
    recipe = recipe_run(name, paths, Path(args.work) / f"out_{name}", overrides, args.workers)
    start = time.perf_counter()
    report = runner.run_recipe(recipe)
    seconds = time.perf_counter() - start
    samples = report["samples"]
    row = {"recipe": name, "seconds": seconds, "samples_s": samples["input"] / seconds, "input": samples["input"],
           "kept": samples["kept"], "dropped": drop_summary(report)}
    print(f"  {name}: {row['samples_s']:.1f} samples/s ({seconds:.1f} s), {row['input']} in, kept {row['kept']}, "
          f"dropped {row['dropped']}", flush=True)
    return row


def bench_recipes(args, paths: list[str]) -> list[dict]:
    work = Path(args.work)
    models = {"clip": str(clip_run(work, "tiny224")), **caption_models(work)}
    few, _ = make_shards(work, args.generate_images, 1, args.seed)
    print(f"\n== every recipe once, tiny224 / tiny HF models, load {load_average()} ==", flush=True)
    return [run_each_recipe(path.stem, few if path.stem in GENERATING else paths, models, args)
            for path in sorted(RECIPES.glob("*.yaml"))]


# ------------------------------------------------------------------------------------------------ the summary

def print_summary(args, counts: dict, scores: list[dict], dedup: dict | None, recipes: list[dict],
                  load_before: str) -> None:
    print("\n== summary ==")
    print(f"machine: {machine_line(torch.device('cpu'))}")
    print(f"shards: {args.images} samples in {args.shards} shard(s); planted: "
          + ", ".join(f"{kind} {count}" for kind, count in counts.items()))
    print(f"recipe workers: {'engine default' if args.workers is None else args.workers}")
    for result in scores:
        raw, step = result["raw inference"], result["clip_score recipe"]
        print(f"clip_score ({result['model']}, {result['images']} images, median of {args.trials}): raw {raw:.1f} "
              f"images/s, step {step:.1f} images/s without the report ({result['whole_run']:.1f} with it)")
    for result in scores[1:]:
        print(f"clip_score step / raw inference ({result['model']}): {result['ratio']:.2f}")
    if scores:
        print(f"clip_score step / raw inference: {scores[0]['ratio']:.2f}")
    if dedup:
        print(f"dedup: recall of {dedup['copies']} planted copies {dedup['recall']:.4f}, other rows dropped "
              f"{dedup['other_dropped']}, peak RSS {dedup['peak_rss_gib']:.2f} GiB "
              f"({dedup['peak_rss_gib_before']:.2f} GiB before the call)")
        if "subset_recall" in dedup:
            print(f"dedup on the first {dedup['subset_rows']} rows: default search finds "
                  f"{dedup['subset_recall']:.4f} of the exact search's {dedup['subset_exact_dropped']} drops "
                  f"({dedup['subset_bucketed_s']:.1f} s vs {dedup['subset_exact_s']:.1f} s exact)")
        print(f"{dedup['rows'] / 1e6:g}M x {dedup['dim']} dedup: {dedup['seconds']:.0f} s")
    for row in recipes:
        print(f"recipe {row['recipe']}: " + (f"skipped ({row['skipped']})" if "skipped" in row else
                                             f"{row['samples_s']:.1f} samples/s, {row['input']} in, "
                                             f"{row['kept']} kept; dropped {row['dropped']}"))
    print(f"load average before/after: {load_before} / {load_average()} (other processes share this machine)")


def profile(args, paths: list[str]) -> None:
    import cProfile
    import pstats

    from vlp.recipes import runner

    recipe = clip_score_recipe(clip_run(Path(args.work), args.score_models[0]), paths[:args.score_shards], args)
    profiler = cProfile.Profile()
    profiler.enable()
    runner.run_recipe(recipe)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(20)
    stats.sort_stats("cumulative").print_stats(30)


def main(argv=None) -> None:
    args = parse_args(argv)
    load_before = load_average()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    paths, counts = make_shards(Path(args.work), args.images, args.shards, args.seed)
    if args.profile:
        profile(args, paths)
        return
    dedup = None if args.skip_1m else bench_dedup(args)
    scores = [] if args.skip_score else [compare_clip_score(args, paths, model) for model in args.score_models]
    recipes = [] if args.skip_recipes else bench_recipes(args, paths)
    print_summary(args, counts, scores, dedup, recipes, load_before)


if __name__ == "__main__":
    main()
