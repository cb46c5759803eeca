"""Zero-shot evaluation throughput of ``vlp eval --task zeroshot`` against OpenCLIP's zero-shot code, on the same
model and the same images.

    python tools/bench_zeroshot.py                    # demo-config model, 600 JPEGs, 2 workers, batch 64, 5 trials
    python tools/bench_zeroshot.py --config configs/tiny.yaml --images 200 --trials 3

The model is the ``--config`` model after one training step (weights do not change the cost), exported with
``vlp export --format open_clip``; both are made once under ``--work``. The images are synthetic photos
(``tools/bench_data.synthetic_photo``: gradients, shapes, texture and grain, so JPEG sizes are those of photos)
of ``--short-side`` pixels on the short side, aspect 4:3 or 3:4, JPEG quality 90, in an ImageFolder of 10
classes.

- **vlp**: what ``vlp eval --task zeroshot --data FOLDER`` runs after loading the model:
  ``read_eval_data`` + ``evaluate_zeroshot`` (classifier over the 80 OpenAI ImageNet templates, embedding in a
  DataLoader, top-1/top-5, confusion matrix and its PNG). The classifier cache is cleared before each trial.
  Timed twice: with JPEG draft decoding (the default) and with ``--no-fast-decode`` (every pixel decoded, as
  OpenCLIP does).
- **OpenCLIP**: ``torchvision.datasets.ImageFolder`` with the exported model's own ``preprocess``, a DataLoader
  with the same batch size and workers, ``open_clip.build_zero_shot_classifier`` (same templates, 10 classes
  per batch) and ``open_clip_train.zero_shot.run`` (its ``accuracy`` swapped for a NumPy-2-safe copy).

Each trial times one whole evaluation, worker start-up included; the implementations alternate in a rotated
order each round, and medians are reported with the load average. The last line is ``ratio: X.XX``: vlp's
images/s (default decoding) over OpenCLIP's.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CLASSES = 10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"), help="the model's training config")
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--short-side", type=int, nargs=2, default=[300, 600], metavar=("MIN", "MAX"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--trials", type=int, default=5, help="timed trials per implementation (median reported)")
    p.add_argument("--work", default="/tmp/vlp_bench_zeroshot", help="cache for the model and the images")
    return p.parse_args(argv)


def prepare_model(work: Path, config: str) -> tuple[Path, Path]:
    """(vlp run dir, OpenCLIP export dir) of ``config``'s model after one step; made once."""
    from vlp.config import load_config
    from vlp.export.open_clip import export_open_clip
    from vlp.train.loop import train

    run, exported = work / "run", work / "open_clip"
    if not (exported / "open_clip_config.json").is_file():
        shutil.rmtree(work / "run", ignore_errors=True)
        train(load_config(config, [f"run_dir={run}", "train.steps=1", "data.val=null", "data.batch_size=8",
                                   "data.num_workers=0", "train.trackers=[]"]))
        export_open_clip(run, exported)
    return run, exported


def prepare_images(folder: Path, count: int, short_side: list[int]) -> Path:
    """An ImageFolder of ``count`` synthetic JPEG photos in 10 classes; made once per setting."""
    sys.path.insert(0, str(REPO / "tools"))
    from bench_data import synthetic_photo

    if folder.is_dir() and sum(1 for _ in folder.glob("*/*.jpg")) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        short = int(rng.integers(short_side[0], short_side[1] + 1))
        size = (short * 4 // 3, short) if rng.random() < 0.7 else (short, short * 4 // 3)
        target = folder / f"class_{i % CLASSES}" / f"{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        synthetic_photo(rng, *size).save(target, quality=90)
    return folder


def accuracy(output, target, topk=(1,)):
    """``open_clip_train.zero_shot.accuracy`` but for ``.item()``: its ``float()`` of a 1-element array is an
    error under NumPy 2."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).item() for k in topk]


def time_vlp(model, folder: Path, out: Path, args, fast_decode: bool) -> float:
    """Seconds of ``vlp eval --task zeroshot``'s evaluation on ``folder``."""
    from vlp.eval.command import evaluate_zeroshot
    from vlp.eval.datasets import read_eval_data

    eval_args = SimpleNamespace(templates=None, batch_size=args.batch_size, workers=args.workers,
                                fast_decode=fast_decode)
    model.classifiers.clear()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    evaluate_zeroshot(model, read_eval_data(str(folder)), eval_args, out)
    return time.perf_counter() - start


def time_open_clip(model, preprocess, tokenizer, folder: Path, args) -> float:
    """Seconds of OpenCLIP's zero-shot evaluation on ``folder``."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES, build_zero_shot_classifier
    from open_clip_train import zero_shot
    from torchvision.datasets import ImageFolder

    zero_shot.accuracy = accuracy
    start = time.perf_counter()
    dataset = ImageFolder(str(folder), transform=preprocess)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    classnames = [name.replace("_", " ") for name in dataset.classes]
    classifier = build_zero_shot_classifier(model, tokenizer, classnames, OPENAI_IMAGENET_TEMPLATES,
                                            num_classes_per_batch=10, device="cpu")
    run_args = SimpleNamespace(device="cpu", precision="fp32", batch_size=args.batch_size)
    zero_shot.run(model, classifier, loader, run_args)
    return time.perf_counter() - start


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> None:
    import open_clip

    import vlp

    args = parse_args(argv)
    work = Path(args.work)
    run, exported = prepare_model(work, args.config)
    folder = prepare_images(work / f"images_{args.images}_{args.short_side[0]}-{args.short_side[1]}", args.images,
                            args.short_side)
    model = vlp.load(run, device="cpu")
    oc_model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{exported}")
    oc_model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{exported}")
    runners = {"vlp": lambda: time_vlp(model, folder, work / "out", args, True),
               "vlp --no-fast-decode": lambda: time_vlp(model, folder, work / "out", args, False),
               "OpenCLIP": lambda: time_open_clip(oc_model, preprocess, tokenizer, folder, args)}
    print(f"model: {args.config} ({sum(p.numel() for p in model.model.parameters()) / 1e6:.2f} M parameters, "
          f"{model.model.visual.image_size} px input); {args.images} JPEGs, short side {args.short_side} px; "
          f"workers {args.workers}, batch {args.batch_size}; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs; load average at start {load_average()}")
    for runner in runners.values():  # warm-up: imports, first-touch of the files, allocator
        runner()
    rates: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for trial in range(args.trials):
        for name in names[trial % len(names):] + names[:trial % len(names)]:
            rates[name].append(args.images / runners[name]())
        print(f"trial {trial + 1}: " + ", ".join(f"{n} {rates[n][-1]:.1f}" for n in names) + " images/s")
    medians = {name: statistics.median(rates[name]) for name in names}
    print("| implementation | images/s (median) | min–max | ÷ OpenCLIP |")
    print("|---|---|---|---|")
    for name in names:
        print(f"| {name} | {medians[name]:.1f} | {min(rates[name]):.1f}–{max(rates[name]):.1f} "
              f"| {medians[name] / medians['OpenCLIP']:.2f} |")
    print(f"load average at end: {load_average()}")
    print(f"ratio: {medians['vlp'] / medians['OpenCLIP']:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
