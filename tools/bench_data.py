"""Training-data throughput of vlp's pipeline against OpenCLIP's WebDataset pipeline, on the same shards.

    python tools/bench_data.py                       # 1 worker each, batch 64, 224 px, 5 interleaved trials
    python tools/bench_data.py --workers 2
    python tools/bench_data.py --profile             # cProfile of both pipelines in one process (workers=0)

The shards are made once and cached (``--shards-dir``): synthetic photos (smooth gradients, shapes, texture and
grain, so that JPEG sizes are those of photos: about 2 bits per pixel at quality 90) in a mix of sizes chosen
by ``--short-side`` / ``--aspect`` / ``--portrait``, each with a ``.txt`` caption and a ``.json`` in
img2dataset's layout (``{key}.jpg/.txt/.json``), plus a ``sizes.json``.

- **vlp** reads them through ``build_train_stream`` + ``stream_loader``, as ``vlp train`` does: a DataConfig
  with ``augment.scale=[0.9, 1.0]`` (OpenCLIP's default crop scale), no flip or jitter, ``fast_decode`` on,
  the CLIP BPE tokenizer collating in the workers. Workers send uint8 images; in training the loop normalizes
  whole batches on the device (``DeviceNormalize``). The tool reports the loader alone and the loader plus
  ``DeviceNormalize`` run in the main process on CPU, the figure a CPU-only run sees; the ``ratio`` line uses
  the latter.
- **OpenCLIP** runs ``open_clip_train.data.get_wds_dataset`` (shard shuffle, sample shuffle, ``pilrgb``
  decode, per-sample tokenization, batching, ``WebLoader``), with the ``preprocess_train`` that
  ``open_clip.create_model_and_transforms("ViT-B-32")`` builds (RandomResizedCrop 224, scale (0.9, 1.0),
  bicubic, normalize) and ``open_clip.get_tokenizer("ViT-B-32")``.

Both use the same batch size and number of workers, and the same sample-shuffle buffer size (5000). Each trial
builds a fresh loader, pulls ``--warmup`` batches untimed (worker start, shuffle-buffer fill), then times
``--batches`` batches, then shuts the loader down, so no loader prefetches while another is timed. Trials of
the implementations alternate, in a rotated order each round. Medians are reported. With workers > 0 the tool
also runs the in-process variant (``--inprocess-trials``, workers=0, one torch thread): the pure per-worker
cost, without IPC. The last line printed is ``ratio: X.XX``: vlp (loader + normalize) images/s over
OpenCLIP's, at ``--workers``.
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SHUFFLE = 5000  # OpenCLIP's _SAMPLE_SHUFFLE_SIZE; vlp's data.shuffle_buffer is set to the same
WORDS = ("a photo of the small large red blue green old new wooden metal glass dog cat bird car house tree "
         "river mountain city street beach sunset person woman man child table chair window boat bike road "
         "flower garden kitchen room night winter summer forest field sky cloud bridge train food plate cup "
         "on in at with near under over next to by and view close up portrait of two three white black").split()


# ----------------------------------------------------------------------------------------------------- setup

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards-dir", default="/tmp/vlp_bench_shards", help="cache of the generated shards")
    p.add_argument("--samples", type=int, default=2000, help="samples in the shards")
    p.add_argument("--shards", type=int, default=8, help="number of tar shards")
    p.add_argument("--short-side", type=int, nargs=2, default=[256, 640], metavar=("MIN", "MAX"),
                   help="shorter image side, uniform in [MIN, MAX] pixels")
    p.add_argument("--aspect", type=float, nargs=2, default=[1.0, 1.78], metavar=("MIN", "MAX"),
                   help="long side / short side, log-uniform in [MIN, MAX]")
    p.add_argument("--portrait", type=float, default=0.25, help="fraction of images taller than wide")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--regenerate", action="store_true", help="rewrite the shards even if cached")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1, help="dataloader workers, for both pipelines")
    p.add_argument("--trials", type=int, default=5, help="timed trials per implementation (median reported)")
    p.add_argument("--batches", type=int, default=8, help="timed batches per trial")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches at the start of each trial")
    p.add_argument("--inprocess-trials", type=int, default=3,
                   help="trials of the workers=0 variant (0: skip it); with --workers 0 it is the main run")
    p.add_argument("--no-fast-decode", dest="fast_decode", action="store_false",
                   help="vlp: data.fast_decode=false (no JPEG draft decoding), to see what it is worth")
    p.add_argument("--profile", action="store_true",
                   help="instead: cProfile both pipelines in this process (workers=0), print the hotspots")
    p.add_argument("--profile-batches", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ the shards

def synthetic_photo(rng: np.random.Generator, width: int, height: int):
    """A smooth colour gradient with blurred shapes, coarse texture and grain: JPEG sizes of a photo."""
    from PIL import Image, ImageDraw, ImageFilter

    sw, sh = max(width // 8, 8), max(height // 8, 8)
    y, x = np.mgrid[0:sh, 0:sw].astype(np.float32)
    corners = rng.uniform(0, 255, (4, 3)).astype(np.float32)
    fx, fy = (x / (sw - 1))[..., None], (y / (sh - 1))[..., None]
    base = (corners[0] * (1 - fx) * (1 - fy) + corners[1] * fx * (1 - fy) + corners[2] * (1 - fx) * fy
            + corners[3] * fx * fy)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        x1, y1 = x0 + rng.uniform(0.05, 0.6) * width, y0 + rng.uniform(0.05, 0.6) * height
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 2.5))))
    texture = rng.normal(0, 30, (height // 4 + 1, width // 4 + 1, 3)) + 128
    texture = np.asarray(Image.fromarray(texture.clip(0, 255).astype(np.uint8)).resize((width, height),
                                                                                         Image.BILINEAR), np.float32)
    pixels = (np.asarray(image, np.float32) + (texture - 128) * rng.uniform(0.2, 0.8)
              + rng.normal(0, 3, (height, width, 3)))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def image_sizes(args, rng: np.random.Generator) -> list[tuple[int, int]]:
    short = rng.integers(args.short_side[0], args.short_side[1] + 1, args.samples)
    aspect = np.exp(rng.uniform(np.log(args.aspect[0]), np.log(args.aspect[1]), args.samples))
    long = np.round(short * aspect).astype(int)
    portrait = rng.random(args.samples) < args.portrait
    return [(int(s), int(lg)) if p else (int(lg), int(s)) for s, lg, p in zip(short, long, portrait)]


def shard_spec(folder: Path, shards: int) -> str:
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


def make_shards(args) -> tuple[str, dict]:
    """The cached shards for these settings (written if missing or made with other settings)."""
    import webdataset as wds

    folder = Path(args.shards_dir)
    settings = {"samples": args.samples, "shards": args.shards, "short_side": args.short_side,
                "aspect": args.aspect, "portrait": args.portrait, "quality": args.quality, "seed": args.seed,
                "version": 1}
    meta = folder / "bench_meta.json"
    if not args.regenerate and meta.is_file():
        stored = json.loads(meta.read_text())
        if stored.get("settings") == settings:
            return shard_spec(folder, args.shards), stored["stats"]
    start = time.perf_counter()
    print(f"writing {args.samples} samples in {args.shards} shards to {folder} ...", flush=True)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rng = np.random.default_rng(args.seed)
    sizes = image_sizes(args, rng)
    per_shard = [len(part) for part in np.array_split(np.arange(args.samples), args.shards)]
    counts, jpeg_bytes, index = {}, [], 0
    for shard, count in enumerate(per_shard):
        name = f"{shard:05d}.tar"
        with wds.TarWriter(str(staging / name)) as sink:
            for i in range(count):
                width, height = sizes[index]
                buffer = io.BytesIO()
                synthetic_photo(rng, width, height).save(buffer, "JPEG", quality=args.quality)
                jpeg_bytes.append(buffer.tell())
                caption = " ".join(rng.choice(WORDS, int(rng.integers(5, 21))))
                key = f"{shard:05d}{i:04d}"
                sink.write({"__key__": key, "jpg": buffer.getvalue(), "txt": caption,
                            "json": {"key": key, "caption": caption, "status": "success", "error_message": None,
                                     "url": f"https://example.com/{key}.jpg", "width": width, "height": height,
                                     "original_width": width, "original_height": height}})
                index += 1
        counts[name] = count
    (staging / "sizes.json").write_text(json.dumps(counts))
    short = np.array([min(s) for s in sizes])
    pixels = np.array([w * h for w, h in sizes])
    jpeg = np.array(jpeg_bytes)
    quantiles = lambda a: [int(v) for v in np.percentile(a, [0, 25, 50, 75, 100])]  # noqa: E731
    stats = {"short_side_quantiles": quantiles(short), "megapixels_mean": round(float(pixels.mean()) / 1e6, 3),
             "jpeg_kb_quantiles": [round(v / 1024) for v in quantiles(jpeg)],
             "bits_per_pixel": round(float((8 * jpeg / pixels).mean()), 2),
             "portrait": round(float(np.mean([h > w for w, h in sizes])), 3),
             "tar_mb": round(sum((staging / n).stat().st_size for n in counts) / 2 ** 20, 1)}
    (staging / "bench_meta.json").write_text(json.dumps({"settings": settings, "stats": stats}))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return shard_spec(folder, args.shards), stats


# ------------------------------------------------------------------------------------------ the pipelines

def visual_tower(image_size: int) -> SimpleNamespace:
    """What vlp's data code reads of an image tower (OpenCLIP ViT-B-32's preprocess settings)."""
    return SimpleNamespace(image_size=image_size, mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic",
                           patch_size=16)


class VlpPipeline:
    """``build_train_stream`` + ``stream_loader``, as ``vlp.train.loop`` calls them."""

    def __init__(self, spec: str, args, normalize: bool):
        from vlp.config import AugmentConfig, DataConfig, TokenizerConfig
        from vlp.data.transforms import DeviceNormalize
        from vlp.models.tokenizers import build_tokenizer

        self.name = "vlp loader + normalize" if normalize else "vlp loader"
        self.spec, self.args = spec, args
        self.visual = visual_tower(args.image_size)
        self.tokenizer = build_tokenizer(TokenizerConfig(type="clip_bpe", context_length=77))
        self.data = DataConfig(train=spec, batch_size=args.batch_size, shuffle_buffer=SHUFFLE,
                               fast_decode=args.fast_decode, augment=AugmentConfig(scale=[0.9, 1.0]))
        self.normalize = DeviceNormalize(self.visual.mean, self.visual.std, torch.device("cpu")) if normalize else None

    def batches(self, workers: int, seed: int):
        from vlp.data import StreamPosition, build_train_stream
        from vlp.data.stream import stream_loader

        self.data.num_workers = workers
        position = StreamPosition()
        stream = build_train_stream(self.data, self.visual, self.tokenizer, seed, 0, 1, position)
        for batch in stream_loader(stream, workers):
            position.consumed(batch)
            if self.normalize is not None:
                batch = self.normalize(batch)
            yield batch["images"]


def _open_clip_webdataset_compat() -> None:
    """OpenCLIP's training extra pins ``webdataset<=0.2.86``; from 0.2.96 on, ``tar_file_expander`` yields an
    end-of-shard marker ``{}`` that ``open_clip_train.data.group_by_keys_nothrow`` fails on (``KeyError:
    'fname'``; webdataset issue #384, open_clip issue #935). Passing ``eof_value=None``, the fix given there,
    restores 0.2.86's stream exactly; nothing else in the pipeline changes."""
    import functools

    import open_clip_train.data as oc_data
    from webdataset.tariterators import tar_file_expander

    if "eof_value" in tar_file_expander.__code__.co_varnames and oc_data.tar_file_expander is tar_file_expander:
        oc_data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)


class OpenClipPipeline:
    """``open_clip_train.data.get_wds_dataset`` with ``create_model_and_transforms("ViT-B-32")``'s
    ``preprocess_train`` and ``get_tokenizer("ViT-B-32")``."""

    name = "OpenCLIP"

    def __init__(self, spec: str, args):
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.spec, self.args = spec, args
        # what create_model_and_transforms builds from the model's preprocess_cfg, without building the model
        self.preprocess = image_transform_v2(
            PreprocessCfg(size=args.image_size, mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic",
                          resize_mode="shortest"), is_train=True, aug_cfg={})
        self.tokenizer = open_clip.get_tokenizer("ViT-B-32")

    def batches(self, workers: int, seed: int):
        from open_clip_train.data import get_wds_dataset

        _open_clip_webdataset_compat()

        ns = argparse.Namespace(
            train_data=self.spec, val_data=None, train_num_samples=self.args.samples * 10 ** 4,  # no epoch end
            train_data_upsampling_factors=None, dataset_resampled=False, batch_size=self.args.batch_size,
            workers=workers, world_size=1, rank=0, seed=seed, distributed=False)
        info = get_wds_dataset(ns, self.preprocess, is_train=True, epoch=0, tokenizer=self.tokenizer)
        for images, _texts in info.dataloader:
            yield images


def trial(pipeline, workers: int, args, seed: int) -> float:
    """Images per second over ``args.batches`` batches after ``args.warmup`` untimed ones, on a fresh loader."""
    batches = pipeline.batches(workers, seed)
    try:
        for _ in range(args.warmup):
            next(batches)
        count, start = 0, time.perf_counter()
        for _ in range(args.batches):
            count += len(next(batches))
        return count / (time.perf_counter() - start)
    finally:
        batches.close()  # shuts the loader's workers down before the next trial
        del batches
        gc.collect()


def normalize_ms(args) -> float:
    """Median time of DeviceNormalize on one uint8 batch in this process (CPU, current torch threads)."""
    from vlp.data.transforms import DeviceNormalize

    normalize = DeviceNormalize(OPENAI_MEAN, OPENAI_STD, torch.device("cpu"))
    images = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        normalize({"images": images})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def run_trials(pipelines: list, workers: int, trials: int, args) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {p.name: [] for p in pipelines}
    for round_ in range(trials):
        shift = round_ % len(pipelines)
        for pipeline in pipelines[shift:] + pipelines[:shift]:
            rate = trial(pipeline, workers, args, args.seed + round_)
            results[pipeline.name].append(rate)
            print(f"  workers={workers} trial {round_ + 1}/{trials} {pipeline.name:<24} {rate:7.1f} images/s",
                  flush=True)
    return results


def print_table(results: dict[str, dict[str, list[float]]]) -> dict[tuple[int, str], float]:
    header = f"{'impl':<24} {'workers':>7} {'images/s':>9} {'per worker':>11} {'best':>7} {'worst':>7} {'trials':>6}"
    print(header)
    print("-" * len(header))
    medians = {}
    for workers, by_name in results.items():
        for name, rates in by_name.items():
            med = medians[workers, name] = statistics.median(rates)
            print(f"{name:<24} {workers:>7} {med:>9.1f} {med / max(workers, 1):>11.1f} {max(rates):>7.1f} "
                  f"{min(rates):>7.1f} {len(rates):>6}")
    return medians


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def compare(args, spec: str) -> None:
    pipelines = [VlpPipeline(spec, args, normalize=False), VlpPipeline(spec, args, normalize=True),
                 OpenClipPipeline(spec, args)]
    load_before = _load()
    results: dict[int, dict[str, list[float]]] = {}
    main_threads = torch.get_num_threads()
    if args.workers > 0:
        results[args.workers] = run_trials(pipelines, args.workers, args.trials, args)
    norm_ms = normalize_ms(args)
    inprocess = args.trials if args.workers == 0 else args.inprocess_trials
    if inprocess:
        torch.set_num_threads(1)  # as in a dataloader worker
        try:
            results[0] = run_trials(pipelines, 0, inprocess, args)
            norm_ms_1 = normalize_ms(args)
        finally:
            torch.set_num_threads(main_threads)
    print()
    print(f"batch {args.batch_size}, {args.image_size} px, RandomResizedCrop scale (0.9, 1.0) bicubic, "
          f"{args.warmup} warmup + {args.batches} timed batches per trial, a fresh loader per trial, interleaved; "
          f"vlp fast_decode={args.fast_decode}")
    print("workers=0: everything in this process with 1 torch thread (per-worker cost without IPC)")
    print(f"DeviceNormalize on CPU, one uint8 batch: {norm_ms:.1f} ms with {main_threads} torch threads"
          + (f", {norm_ms_1:.1f} ms with 1" if inprocess else ""))
    print()
    medians = print_table(results)
    print()
    print(f"load average before/after: {load_before} / {_load()} (other processes share this machine)")
    workers = args.workers
    oc = medians[workers, "OpenCLIP"]
    if workers > 0 and inprocess:
        print(f"in-process ratio (workers=0, vlp loader + normalize / OpenCLIP): "
              f"{medians[0, 'vlp loader + normalize'] / medians[0, 'OpenCLIP']:.2f}")
    print(f"loader-only ratio (workers={workers}, vlp loader / OpenCLIP): {medians[workers, 'vlp loader'] / oc:.2f}")
    print(f"ratio below: vlp loader + normalize on CPU / OpenCLIP, images/s medians at workers={workers}")
    print(f"ratio: {medians[workers, 'vlp loader + normalize'] / oc:.2f}")


def profile(args, spec: str) -> None:
    import cProfile
    import pstats

    torch.set_num_threads(1)
    for pipeline in (VlpPipeline(spec, args, normalize=True), OpenClipPipeline(spec, args)):
        batches = pipeline.batches(0, args.seed)
        for _ in range(args.warmup):
            next(batches)
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        for _ in range(args.profile_batches):
            next(batches)
        profiler.disable()
        elapsed = time.perf_counter() - start
        batches.close()
        images = args.profile_batches * args.batch_size
        print(f"\n=== {pipeline.name}, workers=0, {images} images in {elapsed:.2f} s "
              f"({images / elapsed:.1f} images/s under cProfile, {elapsed / images * 1e3:.2f} ms/image) ===")
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(18)
        stats.sort_stats("cumulative").print_stats(25)


def main(argv=None) -> None:
    args = parse_args(argv)
    spec, stats = make_shards(args)
    print(f"shards: {spec}")
    print(f"  {args.samples} samples, shorter side uniform {args.short_side[0]}-{args.short_side[1]} px, "
          f"aspect log-uniform {args.aspect[0]}-{args.aspect[1]}, {args.portrait:.0%} portrait, JPEG q{args.quality}")
    print(f"  shorter side min/q1/median/q3/max: {'/'.join(map(str, stats['short_side_quantiles']))} px; "
          f"mean {stats['megapixels_mean']} MP; JPEG min/q1/median/q3/max "
          f"{'/'.join(map(str, stats['jpeg_kb_quantiles']))} KiB, {stats['bits_per_pixel']} bits/pixel; "
          f"{stats['tar_mb']} MiB of tar")
    print(f"  host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads in the main process")
    if args.profile:
        profile(args, spec)
    else:
        compare(args, spec)


if __name__ == "__main__":
    main()
