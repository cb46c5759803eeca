"""Do the image-tower heads help? Plain CLIP against CLIP plus each head, at an equal compute budget, over seeds.

    python tools/ablate_heads.py                                   # embedded data, demo model, 3 seeds
    python tools/ablate_heads.py --variants clip flip flip_mae     # the heads on the contrastive pass (FLIP + MAE)
    python tools/ablate_heads.py --variants clip mim_pixel --seeds 0 1 --budget-steps 150
    python tools/ablate_heads.py --config configs/vit_b32.yaml --train "/data/cc3m/{0000..0331}.tar" \\
        --eval-data /data/imagenet_val --retrieval-data /data/coco_val.parquet --budget-steps 20000

**Equal compute.** A head adds forward and backward passes (teacher, extra views, decoder), so a variant with a
head gets fewer steps: ``steps = budget_steps x FLOPs(plain CLIP step) / FLOPs(variant step)``, counted with
``torch.utils.flop_counter.FlopCounterMode`` on one real batch of each variant. FLOPs do not depend on the
machine's load, unlike step time. Warmup and evaluation points scale with the steps.

**Variants** are config overrides on top of ``--config`` (``VARIANTS`` below; ``--set key=value`` adds more to
every variant). Each variant trains once per seed with ``vlp train``'s own loop, then is evaluated with ``vlp
eval``'s own code: zero-shot top-1 and a linear probe and k-NN (on frozen image features) on ``--eval-data``,
image-text retrieval R@1/R@5 on ``--retrieval-data``. The table gives mean ± std over seeds, and the difference
to plain CLIP with a flag where it exceeds twice the larger of the two seed spreads. Results go to
``--output``/results.json and results.md, one run directory per variant and seed beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MASK = ["data.views.mask=block", "data.views.mask_ratio=[0.4,0.6]"]
GLOBAL_VIEWS = ["data.views.global_crops=2", "data.views.global_scale=[0.4,1.0]"]
LOCAL_VIEWS = ["data.views.local_crops=4", "data.views.local_size=12", "data.views.local_scale=[0.1,0.4]"]
SELF_DISTILL = ["heads.self_distill={weight: 0.2, prototypes: 256, hidden_dim: 256, bottleneck_dim: 64, "
                "teacher_temp: 0.07, teacher_temp_warmup_steps: 30, momentum: 0.99}"]
MIM_PIXEL = ["heads.mim_pixel={weight: 0.5, mode: mask_token, decoder_layers: 0}"]
SLIP = ["heads.slip={weight: 0.2, hidden_dim: 256, out_dim: 64}"]
FLIP_MASK = ["data.views.mask=random", "data.views.mask_ratio=[0.5,0.5]"]
FLIP_MAE = ["heads.mim_pixel={weight: 0.5, mode: drop, decoder_layers: 1, decoder_width: 64, decoder_heads: 4, "
            "shared_pass: true}"]
VARIANTS = {
    "clip": [],
    "mim_pixel": MIM_PIXEL + MASK,
    "self_distill": SELF_DISTILL + GLOBAL_VIEWS + LOCAL_VIEWS,
    "slip": SLIP + GLOBAL_VIEWS,
    "all": MIM_PIXEL + SELF_DISTILL + SLIP + MASK + GLOBAL_VIEWS + LOCAL_VIEWS,
    # heads on the contrastive pass itself (shared_pass), no second tower pass; flip is their control: the
    # same dropped patches without a head
    "flip": ["model.image.patch_dropout=0.5"],
    "flip_mae": FLIP_MAE + FLIP_MASK,
    "flip_mae_w1": [*FLIP_MAE, "heads.mim_pixel.weight=1.0"] + FLIP_MASK,
    "simmim_shared": ["heads.mim_pixel={weight: 0.5, shared_pass: true}", "data.views.mask=block",
                      "data.views.mask_ratio=[0.2,0.4]"],
    "mim_feature_shared": ["heads.mim_feature={weight: 0.5, momentum: 0.99, shared_pass: true}",
                           "data.views.mask=block", "data.views.mask_ratio=[0.2,0.4]"],
}
DEFAULT_VARIANTS = ["clip", "mim_pixel", "self_distill", "slip", "all", "flip", "flip_mae"]
METRICS = (("zero-shot top-1", "zeroshot", "top1"), ("linear probe", "linear-probe", "top1"),
           ("k-NN", "knn", "top1"), ("i→t R@1", "retrieval", "image_to_text_R@1"),
           ("i→t R@5", "retrieval", "image_to_text_R@5"), ("t→i R@1", "retrieval", "text_to_image_R@1"),
           ("t→i R@5", "retrieval", "text_to_image_R@5"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs/demo.yaml"), help="the plain-CLIP run to build on")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget-steps", type=int, help="plain CLIP's steps (default: the config's train.steps)")
    p.add_argument("--train", help="data.train for every run (default: the config's)")
    p.add_argument("--eval-data", default="default", help="vlp eval --data for zero-shot and the probes")
    p.add_argument("--retrieval-data", default="default", help="vlp eval --data for retrieval")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every variant")
    p.add_argument("--output", default="runs/ablate_heads", help="results and run directories")
    p.add_argument("--eval-workers", type=int, default=1)
    p.add_argument("--eval-limit", type=int, help="vlp eval --limit: at most this many images per split")
    return p.parse_args(argv)


def base_overrides(args) -> list[str]:
    extra = [f"data.train={args.train}"] if args.train else []
    return ["data.val=null", "train.eval_every=0", "train.checkpoint_every=1000000", *extra, *args.set]


def step_flops(config_path: str, overrides: list[str]) -> int:
    """FLOPs of one training step (forward and backward of the objective) on one real batch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vlp.config import load_config
    from vlp.data import StreamPosition, build_train_stream
    from vlp.data.stream import stream_loader
    from vlp.data.transforms import DeviceNormalize
    from vlp.heads import build_heads
    from vlp.losses import build_loss
    from vlp.models import build_model
    from vlp.objective import Objective

    cfg = load_config(config_path, [*overrides, "data.num_workers=0", "model.tokenizer.type=clip_bpe"])
    model, tokenizer = build_model(cfg.model)
    heads, weights = build_heads(cfg.heads, model, cfg.train.steps)
    objective = Objective(model, build_loss(cfg.loss), cfg.loss.weight, heads, weights)
    stream = build_train_stream(cfg.data, model.visual, tokenizer, cfg.train.seed, 0, 1, StreamPosition())
    batch = next(iter(stream_loader(stream, 0)))
    batch = DeviceNormalize(model.visual.mean, model.visual.std, torch.device("cpu"))(batch)
    with FlopCounterMode(display=False) as counter:
        objective(batch)["loss"].backward()
    return counter.get_total_flops()


def scaled(overrides: list[str], steps: int, plain_steps: int, warmup: int) -> list[str]:
    return [*overrides, f"train.steps={steps}", f"train.warmup_steps={max(1, round(warmup * steps / plain_steps))}"]


def train_variant(config_path: str, overrides: list[str], run_dir: Path) -> None:
    from vlp.config import load_config
    from vlp.train.loop import train

    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        return  # trained by an earlier invocation: the ablation resumes where it stopped
    train(load_config(config_path, [*overrides, f"run_dir={run_dir}"]))


def evaluate(run_dir: Path, args) -> dict[str, float]:
    from vlp.cli import main as vlp_main

    results = {}
    for task, data in (("zeroshot", args.eval_data), ("linear-probe", args.eval_data), ("knn", args.eval_data),
                       ("retrieval", args.retrieval_data)):
        out = run_dir / "eval" / task
        if not (out / "results.json").is_file():
            limit = ["--limit", str(args.eval_limit)] if args.eval_limit else []
            code = vlp_main(["eval", "--model", str(run_dir), "--task", task, "--data", data, "--output", str(out),
                             "--workers", str(args.eval_workers), *limit])
            if code:
                raise SystemExit(f"vlp eval --task {task} failed for {run_dir}")
        metrics = json.loads((out / "results.json").read_text())["metrics"]
        results.update({f"{task}/{key}": value for key, value in metrics.items()})
    return results


def summarize(results: dict[str, list[dict[str, float]]]) -> str:
    """A markdown table of mean ± std per variant, with each variant's difference to plain CLIP."""
    def stats(variant: str, key: str) -> tuple[float, float]:
        values = [run[key] for run in results[variant]]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    header = "| variant | steps | " + " | ".join(name for name, _, _ in METRICS) + " |"
    rows = [header, "|" + "---|" * (len(METRICS) + 2)]
    for variant in results:
        cells = []
        for _, task, metric in METRICS:
            mean, std = stats(variant, f"{task}/{metric}")
            cell = f"{mean:.3f} ± {std:.3f}"
            if variant != "clip" and "clip" in results:
                base_mean, base_std = stats("clip", f"{task}/{metric}")
                delta = mean - base_mean
                beyond = abs(delta) > 2 * max(std, base_std) and len(results[variant]) > 1
                cell += f" ({delta:+.3f}{'*' if beyond else ''})"
            cells.append(cell)
        rows.append(f"| {variant} | {results[variant][0]['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    from vlp.config import load_config

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    plain = load_config(args.config, base_overrides(args))
    budget = args.budget_steps or plain.train.steps
    overrides = {name: [*base_overrides(args), *VARIANTS[name]] for name in args.variants}
    flops = {name: step_flops(args.config, overrides[name]) for name in args.variants}
    plain_flops = step_flops(args.config, base_overrides(args)) if "clip" not in flops else flops["clip"]
    steps = {name: max(1, round(budget * plain_flops / flops[name])) for name in args.variants}
    for name in args.variants:
        print(f"{name:<13} {flops[name] / 1e9:8.2f} GFLOP/step  x{flops[name] / plain_flops:.2f}  "
              f"{steps[name]} steps", flush=True)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in args.variants}
    for seed in args.seeds:
        for name in args.variants:
            run_dir = output / f"{name}_seed{seed}"
            start = time.perf_counter()
            train_variant(args.config, scaled(overrides[name], steps[name], budget, plain.train.warmup_steps)
                          + [f"train.seed={seed}"], run_dir)
            metrics = {**evaluate(run_dir, args), "steps": steps[name], "seed": seed}
            results[name].append(metrics)
            print(f"{name} seed {seed}: " + ", ".join(f"{label} {metrics[f'{task}/{key}']:.3f}"
                                                     for label, task, key in METRICS)
                  + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    table = summarize(results)
    (output / "results.json").write_text(json.dumps({"budget_steps": budget, "flops": flops, "runs": results},
                                                    indent=1) + "\n")
    (output / "results.md").write_text(table)
    print(table)
    print("(±: std over seeds; in brackets: the difference to clip, * where it exceeds twice the larger std)")


if __name__ == "__main__":
    main()
