"""Training-step throughput of vlp against OpenCLIP's own training step, same model, batch, precision and data.

    python tools/bench_train.py                      # CPU: configs/demo.yaml's model, batch 256, fp32
    python tools/bench_train.py --preset vit_b32     # GPU: OpenCLIP ViT-B-32 shapes, bf16
    python tools/bench_train.py --vocab-sweep        # vlp's step with a 49408- vs a 256-token vocabulary
    python tools/bench_train.py --heads              # each image-tower head's extra step time and memory

vlp runs its real step (``Objective`` + ``accumulate_gradients`` + ``build_optimizer`` + gradient clipping +
optimizer/scheduler step, through an ``accelerate.Accelerator``, exactly as ``vlp/train/loop.py`` does).
OpenCLIP runs ``open_clip_train.train.train_one_epoch`` itself, one call per timed window, on a model made by
``open_clip.create_model`` from the OpenCLIP config that ``vlp export`` would write for the same vlp model, with
the AdamW param groups, cosine schedule and ``ClipLoss`` that ``open_clip_train.main`` builds. Both start from
the same weights (vlp's, loaded strictly into OpenCLIP) and read the same synthetic batches, already on device.

Timed windows alternate between the two (warmup first); each window ends with one host sync, and the table
reports medians. Peak memory is the step's high-water mark above the memory resident before it (weights,
optimizer state): ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak RSS (VmHWM) of a fresh child
process per implementation, run with a fixed glibc mmap threshold so that freed tensors leave the RSS.
MFU = FLOPs of one forward+backward (``FlopCounterMode``, attention counted on the math path) per second over
``--peak-tflops`` (default: a measured large fp32 matmul on CPU, the dense datasheet figure on known GPUs).
The last line printed is ``ratio: X.XX``: vlp samples/s over OpenCLIP samples/s.

``--heads`` times vlp's step instead with each head of ``--heads-config`` (its ``heads`` sections and
``data.views``; default configs/heads_tiny.yaml) switched on alone, against plain CLIP on the same model, and
prints each head's extra step time and peak memory as ratios to plain CLIP.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"demo": REPO / "configs" / "demo.yaml", "vit_b32": REPO / "configs" / "vit_b32.yaml"}
CLIP_BPE_VOCAB = 49408
# dense tensor-core peaks (TFLOP/s) from the datasheets, by precision; fp32 is the non-tensor-core figure
GPU_PEAKS = {"H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
             "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}}
OPEN_CLIP_PRECISION = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp"}


# ----------------------------------------------------------------------------------------------------- setup

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                   help="model shapes: demo (configs/demo.yaml, CPU) or vit_b32 (configs/vit_b32.yaml, GPU)")
    p.add_argument("--config", help="a vlp config file instead of a preset (its model is benchmarked)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    p.add_argument("--batch-size", type=int, help="per step (default: the config's data.batch_size)")
    p.add_argument("--steps", type=int, default=3, help="steps per timed window")
    p.add_argument("--windows", type=int, default=7, help="timed windows per implementation (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation first")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: fp32 on CPU, bf16 on GPUs that have it")
    p.add_argument("--compile", action="store_true",
                   help="vlp: train.compile=true (towers compiled); OpenCLIP: torch.compile(model) (--torchcompile)")
    p.add_argument("--vocab-size", type=int,
                   help="text vocabulary (default: the config's; 49408 for the CLIP BPE tokenizer)")
    p.add_argument("--peak-tflops", type=float, help="hardware peak for MFU (default: measured/datasheet)")
    p.add_argument("--memory", choices=["auto", "off"], default="auto", help="off: skip the peak-memory probe")
    p.add_argument("--vocab-sweep", action="store_true",
                   help="instead: time vlp's step with vocabularies --sweep-vocabs (large first)")
    p.add_argument("--sweep-vocabs", type=int, nargs=2, default=[CLIP_BPE_VOCAB, 256], metavar=("LARGE", "SMALL"))
    p.add_argument("--no-sweep-open-clip", dest="sweep_open_clip", action="store_false",
                   help="--vocab-sweep: leave out OpenCLIP's step at the two vocabularies")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heads", action="store_true", help="time each image-tower head against plain CLIP")
    p.add_argument("--heads-config", default=str(REPO / "configs" / "heads_tiny.yaml"),
                   help="--heads: the config whose heads sections and data.views are benchmarked")
    p.add_argument("--memory-probe", help=argparse.SUPPRESS)  # child process: vlp, open_clip, or head:NAME
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.precision == "auto":
        args.precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "fp32"
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def vlp_config(args: argparse.Namespace, vocab_size: int | None = None):
    from vlp.config import load_config

    path = args.config or PRESETS[args.preset]
    overrides = [f"run_dir={tempfile.gettempdir()}/vlp-bench", f"train.precision={args.precision}",
                 f"train.compile={str(args.compile).lower()}", "train.trackers=[]"]
    if args.batch_size:
        overrides.append(f"data.batch_size={args.batch_size}")
    cfg = load_config(path, overrides)
    vocab = vocab_size or args.vocab_size or (
        CLIP_BPE_VOCAB if cfg.model.tokenizer.type == "clip_bpe" else cfg.model.tokenizer.vocab_size)
    return cfg, vocab


def synthetic_tokenizer(vocab_size: int, context_length: int):
    """A tokenizer stand-in (no training, no files): pad 0, end-of-text 1, as vlp's SentencePiece tokenizers."""
    from vlp.models.tokenizers import Tokenizer

    def encode(texts):  # characters to ids >= 3, then end-of-text, then padding (the benchmark feeds ids)
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [3 + ord(c) % (vocab_size - 3) for c in text][: context_length - 1] + [1]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    return Tokenizer(encode, vocab_size, pad_id=0, eos_id=1, context_length=context_length, kind="synthetic")


def synthetic_batches(count: int, batch_size: int, image_size: int, context_length: int, vocab_size: int,
                      device: torch.device, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random images and captions of random length (tokens, end-of-text, padding), already on ``device``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        images = torch.randn(batch_size, 3, image_size, image_size, generator=g)
        lengths = torch.randint(2, context_length + 1, (batch_size,), generator=g)
        tokens = torch.randint(3, vocab_size, (batch_size, context_length), generator=g)
        position = torch.arange(context_length)
        tokens[position >= lengths[:, None]] = 0
        tokens[torch.arange(batch_size), lengths - 1] = 1
        out.append((images.to(device), tokens.to(device)))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------- the two runners

class VlpRunner:
    """vlp's training step, statement for statement as in ``vlp.train.loop.train``."""

    name = "vlp"

    def __init__(self, cfg, vocab_size: int, device: torch.device, accelerator=None):
        from accelerate import Accelerator

        from vlp.heads import build_heads
        from vlp.losses import build_loss
        from vlp.models import DualEncoder
        from vlp.objective import Objective
        from vlp.train.loop import mixed_precision
        from vlp.train.metrics import TermWindow
        from vlp.train.optim import build_optimizer, cosine_schedule

        self.cfg, self.device = cfg, device
        self.accelerator = accelerator or Accelerator(mixed_precision=mixed_precision(cfg.train.precision),
                                                      cpu=device.type == "cpu")
        tokenizer = synthetic_tokenizer(vocab_size, cfg.model.tokenizer.context_length)
        model = DualEncoder(cfg.model, tokenizer)
        heads, head_weights = build_heads(cfg.heads, model, cfg.train.steps)
        objective = Objective(model, build_loss(cfg.loss), cfg.loss.weight, heads, head_weights)
        self.model = model
        self.flop_module = objective
        if cfg.train.compile:
            model.visual.compile()
            model.text.compile()
        optimizer = build_optimizer(objective, cfg.train, self.accelerator.device)
        self.scheduler = cosine_schedule(optimizer, cfg.train)
        self.objective, self.optimizer = self.accelerator.prepare(objective, optimizer)
        self.window = TermWindow()
        self.step_index = 0

    def state_dict_for_open_clip(self) -> dict:
        from vlp.export.open_clip import open_clip_state_dict

        return open_clip_state_dict(self.model)

    def open_clip_model_cfg(self) -> dict:
        # what `vlp export` writes (vlp/export/open_clip.py), less the tokenizer name
        return {"embed_dim": self.model.text.text_projection.shape[-1], "custom_text": True,
                "vision_cfg": self.model.visual.open_clip_vision_cfg(),
                "text_cfg": self.model.text.open_clip_text_cfg()}

    def run(self, batches: list, flush: bool = True) -> None:
        from vlp.train.accumulation import accumulate_gradients
        from vlp.train.loop import _to_device

        accelerator, cfg = self.accelerator, self.cfg
        for images, tokens, *views in batches:  # views: the batch fields the heads read, if any
            self.step_index += 1
            step = self.step_index
            micro_batches = [_to_device({"images": images, "tokens": tokens, **(views[0] if views else {})},
                                        accelerator.device)]
            terms = accumulate_gradients(self.objective, micro_batches, accelerator)
            if cfg.train.grad_clip:
                accelerator.clip_grad_norm_(self.objective.parameters(), cfg.train.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            accelerator.unwrap_model(self.objective).after_optimizer_step(step)
            self.window.add(step, terms)
        if flush:
            self.last_loss = self.window.flush()["loss"]  # the loop's logging flush: one host sync per window

    def loss_on(self, images, tokens) -> torch.Tensor:
        with torch.no_grad(), self.accelerator.autocast():
            return self.objective({"images": images, "tokens": tokens})["loss"].float()


class _InMemoryLoader:
    """What ``train_one_epoch`` reads from ``data['train'].dataloader``: batches, ``num_batches``, ``num_samples``."""

    def __init__(self, batches):
        self.batches = batches
        self.num_batches = len(batches)
        self.num_samples = sum(len(images) for images, _ in batches)

    def __iter__(self):
        return iter(self.batches)


class _DataInfo:
    def __init__(self, loader):
        self.dataloader = loader

    def set_epoch(self, epoch: int) -> None:
        pass


class OpenClipRunner:
    """``open_clip_train.train.train_one_epoch`` on the model, optimizer, scheduler and loss that
    ``open_clip_train.main`` would build for ``--model local-dir:... --grad-clip-norm ... --precision ...``."""

    name = "OpenCLIP"

    def __init__(self, model_cfg: dict, state_dict: dict, cfg, device: torch.device, total_steps: int):
        import logging

        import open_clip
        from open_clip_train.scheduler import cosine_lr

        logging.getLogger().setLevel(logging.ERROR)  # create_model warns that the directory has no weights
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
            model = open_clip.create_model(f"local-dir:{tmp}", precision="fp32", device=device, output_dict=True)
        model.load_state_dict(state_dict, strict=True)
        self.model, self.device, self.cfg = model, device, cfg
        self.flop_module = None
        tc = cfg.train
        # open_clip_train/main.py: two AdamW groups, no weight decay on gains, biases and the logit scale
        exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
        named = list(model.named_parameters())
        gain_or_bias = [p for n, p in named if exclude(n, p) and p.requires_grad]
        rest = [p for n, p in named if not exclude(n, p) and p.requires_grad]
        self.optimizer = torch.optim.AdamW([{"params": gain_or_bias, "weight_decay": 0.0},
                                            {"params": rest, "weight_decay": tc.weight_decay}],
                                           lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps)
        self.scheduler = cosine_lr(self.optimizer, tc.lr, tc.warmup_steps, max(total_steps, tc.warmup_steps + 1))
        self.loss = open_clip.ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=True, rank=0,
                                       world_size=1, use_horovod=False)
        precision = OPEN_CLIP_PRECISION[cfg.train.precision]
        self.scaler = torch.amp.GradScaler(device=device.type) if precision == "amp" else None
        self.train_model = torch.compile(model) if tc.compile else model
        self.args = SimpleNamespace(
            device=str(device), precision=precision, distill=False, accum_freq=1, skip_scheduler=False,
            grad_clip_norm=tc.grad_clip, horovod=False, log_every_n_steps=10 ** 9, world_size=1, rank=0,
            local_rank=0, batch_size=cfg.data.batch_size, wandb=False)
        self.epoch = 0

    def run(self, batches: list) -> None:
        from open_clip_train.train import train_one_epoch

        # one epoch per window; it logs (one .item() host sync) after its last batch
        train_one_epoch(self.train_model, {"train": _DataInfo(_InMemoryLoader(batches))}, self.loss, self.epoch,
                        self.optimizer, self.scaler, self.scheduler, None, self.args, tb_writer=None)
        self.epoch += 1

    def loss_on(self, images, tokens) -> torch.Tensor:
        from open_clip_train.precision import get_autocast

        with torch.no_grad(), get_autocast(self.args.precision, device_type=self.device.type)():
            return self.loss(**self.model(images, tokens)).float()


# --------------------------------------------------------------------------------------------- measurements

def count_flops(module: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, loss=None) -> int:
    """FLOPs of one forward + backward (attention through the math path, so that it is counted on CPU too)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel([SDPBackend.MATH]), counter:
        if loss is None:
            out = module({"images": images, "tokens": tokens})["loss"]
        else:
            out = loss(**module(images, tokens))
        out.backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def count_syncs(vlp: VlpRunner, batches: list, args: argparse.Namespace) -> int:
    """Warnings raised by ``torch.cuda.set_sync_debug_mode('warn')`` over vlp steps (after one warmup step)."""
    import warnings

    vlp.run(batches[:1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            vlp.run([batches[i % len(batches)] for i in range(args.steps)], flush=False)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    vlp.window.flush()
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    for w in syncs[:3]:
        print(f"  sync: {w.filename}:{w.lineno}: {w.message}")
    return len(syncs)


def default_peak_tflops(device: torch.device, precision: str) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS.items():
            if key in name:
                return peaks[precision], f"{key} dense {precision} datasheet"
    # measured: the best of a few large fp32 matmuls
    n = 2048 if device.type == "cpu" else 8192
    dtype = torch.float32 if device.type == "cpu" or precision == "fp32" else (
        torch.bfloat16 if precision == "bf16" else torch.float16)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(10):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e12, f"measured {n}x{n} {str(dtype).removeprefix('torch.')} matmul"


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(args: argparse.Namespace) -> None:
    """Child process: build one implementation, warm up, then print the peak RSS above the pre-step RSS."""
    if args.memory_probe.startswith("head:"):
        runner, batches = head_runner(args, args.memory_probe.removeprefix("head:") or None)
    else:
        runner, batches = build_pair(args, only=args.memory_probe)
    runner.run(batches[:2])  # optimizer state allocated, grads freed (set_to_none)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _vm("VmRSS")
    runner.run(batches[:2])
    print(json.dumps({"peak_bytes": _vm("VmHWM") - base, "rss_bytes": base}))


def cpu_peak_memory(side: str) -> dict | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, __file__, *sys.argv[1:], "--memory-probe", side]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode:
        print(f"[memory probe {side} failed]\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_pair(args: argparse.Namespace, only: str | None = None):
    """The vlp runner and/or the OpenCLIP runner on the same config, plus the shared synthetic batches."""
    device = torch.device(args.device)
    cfg, vocab = vlp_config(args)
    torch.manual_seed(args.seed)
    vlp = VlpRunner(cfg, vocab, device)
    image_size, ctx = vlp.model.visual.image_size, vlp.model.text.context_length
    batches = synthetic_batches(2, cfg.data.batch_size, image_size, ctx, vocab, device, args.seed)
    if only == "vlp":
        return vlp, batches
    total = (args.warmup + args.steps * args.windows) * 2
    oc = OpenClipRunner(vlp.open_clip_model_cfg(), vlp.state_dict_for_open_clip(), cfg, device, total)
    if only == "open_clip":
        return oc, batches
    return vlp, oc, cfg, vocab, batches


def time_windows(runners: list, batches: list, args: argparse.Namespace, device: torch.device,
                 track_cuda_memory: bool = False) -> dict[str, dict]:
    """Warm up each runner, then alternate timed windows (the order flips each round)."""
    window = [batches[i % len(batches)] for i in range(args.steps)]
    for runner in runners:
        runner.run([batches[i % len(batches)] for i in range(args.warmup)])
        sync(device)
    results = {r.name: {"times": [], "cpu_times": [], "peak_bytes": 0} for r in runners}
    for round_index in range(args.windows):
        order = runners if round_index % 2 == 0 else runners[::-1]
        for runner in order:
            gc.collect()
            if track_cuda_memory:
                sync(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            sync(device)
            t, c = time.perf_counter(), time.process_time()
            runner.run(window)
            sync(device)
            results[runner.name]["times"].append((time.perf_counter() - t) / args.steps)
            results[runner.name]["cpu_times"].append((time.process_time() - c) / args.steps)
            if track_cuda_memory:
                results[runner.name]["peak_bytes"] = max(results[runner.name]["peak_bytes"],
                                                         torch.cuda.max_memory_allocated(device) - base)
    return results


def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
        hw = f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{hw}; torch {torch.__version__}, python {platform.python_version()}"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2 ** 20:.1f}"


# ------------------------------------------------------------------------------------------------- the modes

def compare(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    vlp, oc, cfg, vocab, batches = build_pair(args)
    n_vlp, n_oc = param_count(vlp.model), param_count(oc.model)
    assert n_vlp == n_oc, f"parameter counts differ: vlp {n_vlp} vs OpenCLIP {n_oc}"
    images, tokens = batches[0]
    loss_vlp, loss_oc = vlp.loss_on(images, tokens).item(), oc.loss_on(images, tokens).item()
    flops_vlp = count_flops(vlp.flop_module, images, tokens)
    flops_oc = count_flops(oc.model, images, tokens, loss=oc.loss)
    peak, peak_source = ((args.peak_tflops, "--peak-tflops") if args.peak_tflops
                         else default_peak_tflops(device, args.precision))
    m = cfg.model
    print(f"machine: {machine_line(device)}")
    print(f"model: {args.config or PRESETS[args.preset].relative_to(REPO)} | image {m.image.type} "
          f"{m.image.image_size}px {m.image.kwargs} | text {m.text.type} width {m.text.width} layers "
          f"{m.text.layers} heads {m.text.heads} ctx {m.tokenizer.context_length} vocab {vocab} | "
          f"{n_vlp / 1e6:.3f}M params (equal)")
    print(f"batch {cfg.data.batch_size}, precision {args.precision}, compile {args.compile}, device {device}, "
          f"{args.warmup} warmup + {args.windows} windows x {args.steps} steps each, interleaved")
    print(f"same weights: initial loss vlp {loss_vlp:.5f} vs OpenCLIP {loss_oc:.5f}; "
          f"fwd+bwd FLOPs/step vlp {flops_vlp / 1e9:.2f} G, OpenCLIP {flops_oc / 1e9:.2f} G")

    if device.type == "cuda":
        syncs = count_syncs(vlp, batches, args)
        print(f"host syncs inside vlp's step (CUDA sync debug mode, {args.steps} steps): {syncs}")
    load_before = _load()
    results = time_windows([vlp, oc], batches, args, device, track_cuda_memory=device.type == "cuda")
    if device.type == "cpu" and args.memory == "auto":
        del vlp, oc
        gc.collect()
        for name, side in (("vlp", "vlp"), ("OpenCLIP", "open_clip")):
            probe = cpu_peak_memory(side)
            results[name]["peak_bytes"] = probe and probe["peak_bytes"]
    elif args.memory == "off":
        for r in results.values():
            r["peak_bytes"] = None
    if not args.peak_tflops and device.type == "cpu":  # measured again; the larger is the less disturbed
        peak = max(peak, default_peak_tflops(device, args.precision)[0])
    print(f"peak for MFU: {peak:.3f} TFLOP/s ({peak_source}, best of before and after the timing)"
          if not args.peak_tflops and device.type == "cpu" else f"peak for MFU: {peak:.3f} TFLOP/s ({peak_source})")
    mem_label = "peak step MiB" + (" (RSS)" if device.type == "cpu" else " (CUDA)")
    print()
    header = (f"{'impl':<9} {'samples/s':>10} {'step ms (median)':>17} {'best ms':>8} {'worst ms':>9} "
              f"{'CPU s/step':>11} {mem_label:>19} {'TFLOP/s':>8} {'MFU':>7}")
    print(header)
    print("-" * len(header))
    rates, best = {}, {}
    for name, flops in (("vlp", flops_vlp), ("OpenCLIP", flops_oc)):
        r = results[name]
        med = statistics.median(r["times"])
        rates[name], best[name] = cfg.data.batch_size / med, min(r["times"])
        tflops = flops / med / 1e12
        print(f"{name:<9} {rates[name]:>10.1f} {med * 1e3:>17.1f} {best[name] * 1e3:>8.1f} "
              f"{max(r['times']) * 1e3:>9.1f} "
              f"{statistics.median(r['cpu_times']):>11.2f} {_mib(r['peak_bytes']):>19} {tflops:>8.3f} "
              f"{tflops / peak:>7.1%}")
    print()
    print(f"load average before/after: {load_before} / {_load()} (other processes share this machine)")
    print(f"ratio of best windows: {best['OpenCLIP'] / best['vlp']:.2f}")
    print(f"ratio: {rates['vlp'] / rates['OpenCLIP']:.2f}")


def head_runner(args: argparse.Namespace, head: str | None):
    """vlp's step with one head of ``--heads-config`` on (``None``: plain CLIP), and batches with its views."""
    import dataclasses

    from vlp.config import load_config
    from vlp.data.masks import MASKS

    cfg, vocab = vlp_config(args)
    source = load_config(args.heads_config)
    cfg = dataclasses.replace(cfg, heads={head: source.heads[head]} if head else {},
                              data=dataclasses.replace(cfg.data, views=source.data.views))
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    runner = VlpRunner(cfg, vocab, device)
    runner.name = head or "clip"
    visual, views, size = runner.model.visual, cfg.data.views, cfg.data.batch_size
    g = torch.Generator().manual_seed(args.seed)
    mask = MASKS.get(views.mask)(visual.image_size // visual.patch_size, views.mask_ratio)
    fields = {"global_crops": torch.randn(size, views.global_crops, 3, visual.image_size, visual.image_size,
                                          generator=g),
              "local_crops": torch.randn(size, views.local_crops, 3, views.local_size, views.local_size, generator=g),
              "mim_mask": torch.stack([mask(g) for _ in range(size)]),
              "global_crop_masks": torch.stack([torch.stack([mask(g) for _ in range(views.global_crops)])
                                                for _ in range(size)])}
    plain = synthetic_batches(2, size, visual.image_size, runner.model.text.context_length, vocab, device, args.seed)
    return runner, [(images, tokens, {k: v.to(device) for k, v in fields.items()}) for images, tokens in plain]


def heads_cost(args: argparse.Namespace) -> None:
    """Each head's extra step time and peak memory over plain CLIP, same model, batch and weights."""
    from vlp.config import load_config

    device = torch.device(args.device)
    names = list(load_config(args.heads_config).heads)
    runners = [head_runner(args, None)[0]] + [head_runner(args, name)[0] for name in names]
    batches = head_runner(args, None)[1]
    print(f"machine: {machine_line(device)}")
    print(f"model: {args.config or PRESETS[args.preset].relative_to(REPO)}, batch {runners[0].cfg.data.batch_size}, "
          f"heads and views from {args.heads_config}; {args.warmup} warmup + {args.windows} windows x "
          f"{args.steps} steps, interleaved")
    load_before = _load()
    results = time_windows(runners, batches, args, device, track_cuda_memory=device.type == "cuda")
    params = {r.name: sum(p.numel() for p in r.flop_module.heads.parameters() if p.requires_grad)
              for r in runners}
    if device.type == "cpu" and args.memory == "auto":
        del runners
        gc.collect()
        for name in results:
            probe = cpu_peak_memory(f"head:{'' if name == 'clip' else name}")
            results[name]["peak_bytes"] = probe and probe["peak_bytes"]
    header = (f"{'head':<13} {'step ms':>8} {'extra ms':>9} {'time x':>7} {'peak MiB':>9} {'memory x':>9} "
              f"{'trained params':>15}")
    print()
    print(header)
    print("-" * len(header))
    base_time, base_peak = statistics.median(results["clip"]["times"]), results["clip"]["peak_bytes"]
    for name, r in results.items():
        med = statistics.median(r["times"])
        mem_ratio = f"{r['peak_bytes'] / base_peak:.2f}" if r["peak_bytes"] and base_peak else "n/a"
        print(f"{name:<13} {med * 1e3:>8.1f} {(med - base_time) * 1e3:>9.1f} {med / base_time:>7.2f} "
              f"{_mib(r['peak_bytes']):>9} {mem_ratio:>9} {params[name]:>15}")
    print()
    print(f"load average before/after: {load_before} / {_load()} (other processes share this machine)")


def vocab_sweep(args: argparse.Namespace) -> None:
    """vlp's step on one model at two vocabulary sizes, OpenCLIP's alongside for reference; vlp's steps are also
    split into forward+backward and gradient clipping + AdamW."""
    from accelerate import Accelerator

    from vlp.train.accumulation import accumulate_gradients
    from vlp.train.loop import mixed_precision

    device = torch.device(args.device)
    large, small = args.sweep_vocabs
    vlp_runners, oc_runners, accelerator = {}, {}, None
    for vocab in (large, small):
        cfg, _ = vlp_config(args, vocab)
        torch.manual_seed(args.seed)
        accelerator = accelerator or Accelerator(mixed_precision=mixed_precision(cfg.train.precision),
                                                 cpu=device.type == "cpu")
        runner = VlpRunner(cfg, vocab, device, accelerator)
        runner.name = f"vlp {vocab}"
        vlp_runners[vocab] = runner
        if args.sweep_open_clip:
            total = (args.warmup + args.steps * args.windows) * 2
            oc = OpenClipRunner(runner.open_clip_model_cfg(), runner.state_dict_for_open_clip(), cfg, device, total)
            oc.name = f"OpenCLIP {vocab}"
            oc_runners[vocab] = oc
    # the same batches for all: token ids drawn below the small vocabulary
    small_runner = vlp_runners[small]
    batches = synthetic_batches(2, cfg.data.batch_size, small_runner.model.visual.image_size,
                                small_runner.model.text.context_length, small, device, args.seed)
    load_before = _load()
    results = time_windows([*vlp_runners.values(), *oc_runners.values()], batches, args, device)

    # where vlp's time goes: forward+backward vs clipping + optimizer step, synced between phases, interleaved
    phases = {vocab: ([], []) for vocab in vlp_runners}
    for i in range(args.steps * 2):
        images, tokens = batches[i % 2]
        for vocab, runner in (vlp_runners.items() if i % 2 == 0 else reversed(vlp_runners.items())):
            sync(device)
            t0 = time.perf_counter()
            accumulate_gradients(runner.objective, [{"images": images, "tokens": tokens}], runner.accelerator)
            sync(device)
            t1 = time.perf_counter()
            if runner.cfg.train.grad_clip:
                runner.accelerator.clip_grad_norm_(runner.objective.parameters(), runner.cfg.train.grad_clip)
            runner.optimizer.step()
            runner.scheduler.step()
            runner.optimizer.zero_grad(set_to_none=True)
            sync(device)
            phases[vocab][0].append(t1 - t0)
            phases[vocab][1].append(time.perf_counter() - t1)

    print(f"machine: {machine_line(device)}")
    print(f"vocabulary cost: {args.config or PRESETS[args.preset].relative_to(REPO)} model, batch "
          f"{cfg.data.batch_size}, precision {args.precision}, compile {args.compile}, {args.warmup} warmup + "
          f"{args.windows} windows x {args.steps} steps each, interleaved; token ids < {small} in all")
    print()
    header = (f"{'impl':<9} {'vocab':>6} {'params M':>9} {'embedding M':>12} {'samples/s':>10} {'step ms':>8} "
              f"{'best ms':>8} {'fwd+bwd ms':>11} {'clip+AdamW ms':>14}")
    print(header)
    print("-" * len(header))
    med = {}
    for impl, runners in (("vlp", vlp_runners), ("OpenCLIP", oc_runners)):
        for vocab, runner in runners.items():
            times = results[runner.name]["times"]
            med[impl, vocab] = statistics.median(times)
            fb, opt = (statistics.median(phases[vocab][i]) * 1e3 for i in (0, 1))
            split = (f"{fb:>11.1f} {opt:>14.1f}"
                     if impl == "vlp" else f"{'':>11} {'':>14}")
            print(f"{impl:<9} {vocab:>6} {param_count(runner.model) / 1e6:>9.3f} "
                  f"{vocab * runner.cfg.model.text.width / 1e6:>12.3f} {cfg.data.batch_size / med[impl, vocab]:>10.1f} "
                  f"{med[impl, vocab] * 1e3:>8.1f} {min(times) * 1e3:>8.1f} {split}")
    print(f"(step ms: median window; best ms: best window; fwd+bwd, clip+AdamW: medians of "
          f"{args.steps * 2} separately timed vlp steps)")
    print()
    print(f"load average before/after: {load_before} / {_load()} (other processes share this machine)")
    if oc_runners:
        print(f"OpenCLIP vocab ratio: {med['OpenCLIP', large] / med['OpenCLIP', small]:.2f}")
    print(f"vocab ratio: {med['vlp', large] / med['vlp', small]:.2f}  (vlp step time, vocab {large} / vocab {small})")


def main(argv=None) -> None:
    args = resolve(parse_args(argv))
    if args.memory_probe:
        memory_probe(args)
    elif args.vocab_sweep:
        vocab_sweep(args)
    elif args.heads:
        heads_cost(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
