"""The training loop, on HF Accelerate: one process, or many under ``accelerate launch`` (DDP, FSDP, DeepSpeed).

Read top to bottom: set up, restore, then per step fetch micro-batches, compute gradients, step, and every so
often log, evaluate and checkpoint. Losses and heads live in the ``Objective``; nothing here knows about them.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from vlp.config import Config, ConfigError, load_config, save_config, to_dict
from vlp.data import (BAD_REASONS, CaptionedImages, StreamPosition, build_train_stream, dataset_size,
                      load_eval_set, open_sources, read_captions)
from vlp.data.stream import stream_loader
from vlp.data.transforms import DeviceNormalize, image_transform
from vlp.eval import evaluate
from vlp.heads import build_heads
from vlp.losses import build_loss
from vlp.models import build_model
from vlp.models.tokenizers import train_sentencepiece
from vlp.objective import Objective
from vlp.train.accumulation import accumulate_gradients
from vlp.train.checkpoint import latest_checkpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from vlp.train.metrics import MetricsLog, TermWindow, plot_loss_curve
from vlp.train.optim import build_optimizer, cosine_schedule


def mixed_precision(choice: str) -> str:
    """fp32 on CPU (bf16 autocast is far slower without bf16 units); bf16 where the GPU has it, else fp16."""
    if choice == "auto":
        if not torch.cuda.is_available():
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}.get(choice) or _bad_precision(choice)


def _bad_precision(choice: str) -> str:
    raise ConfigError(f"unknown train.precision '{choice}'; valid: auto, fp32, bf16, fp16")


def _trackers(names: list[str]) -> list[str]:
    import importlib.util
    import warnings

    available = [n for n in names if importlib.util.find_spec("torch.utils.tensorboard" if n == "tensorboard" else n)]
    for missing in sorted(set(names) - set(available)):
        warnings.warn(f"tracker '{missing}' is not installed; logging without it", stacklevel=2)
    return available


def _prepare_tokenizer(cfg: Config, run_dir: Path, accelerator: Accelerator, resuming: bool) -> Config:
    """Train a SentencePiece tokenizer on the training captions when the config asks for one without a path;
    a resumed run keeps the one it was trained with."""
    tok = cfg.model.tokenizer
    if tok.type != "sentencepiece" or tok.path is not None:
        return cfg
    target = run_dir / "tokenizer"
    if accelerator.is_main_process and not (resuming and target.is_dir()):
        train_sentencepiece(read_captions(cfg.data.train), tok.vocab_size, target)
    accelerator.wait_for_everyone()
    return dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, tokenizer=dataclasses.replace(tok, path=str(target))))


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


@dataclass
class Session:
    """Everything one training run holds, built from its config."""

    cfg: Config
    run_dir: Path
    accelerator: Accelerator
    model: torch.nn.Module  # the dual encoder, unwrapped
    tokenizer: object
    objective: torch.nn.Module  # prepared by Accelerate
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_sources: tuple[list, list[float]]  # the opened training sources and their weights
    train_size: int  # samples in one pass over them
    val_data: CaptionedImages | None


def build_session(cfg: Config, resuming: bool = False) -> Session:
    run_dir = Path(cfg.run_dir)
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg.train.precision),
                              log_with=_trackers(cfg.train.trackers) or None,
                              project_config=ProjectConfiguration(str(run_dir), logging_dir=str(run_dir / "logs")))
    set_seed(cfg.train.seed)
    train_sources = open_sources(cfg.data.train)
    train_size = dataset_size(train_sources[0])
    val_data = load_eval_set(cfg.data.val, cfg.data.val_samples, cfg.data.max_pixels) if cfg.data.val else None
    cfg = _prepare_tokenizer(cfg, run_dir, accelerator, resuming)
    model, tokenizer = build_model(cfg.model)
    heads, head_weights = build_heads(cfg.heads, model, cfg.train.steps)
    multi_caption = cfg.data.captions.policy == "all"
    if multi_caption and cfg.train.accum_steps > 1:
        raise ConfigError("data.captions.policy=all does not combine with gradient caching (train.accum_steps > 1)")
    objective = Objective(model, build_loss(cfg.loss), cfg.loss.weight, heads, head_weights, multi_caption)
    if cfg.train.compile:
        model.visual.compile()
        model.text.compile()
    optimizer = build_optimizer(objective, cfg.train, accelerator.device)
    scheduler = cosine_schedule(optimizer, cfg.train)  # stepped by us once per step, so not prepared
    objective, optimizer = accelerator.prepare(objective, optimizer)
    return Session(cfg, run_dir, accelerator, model, tokenizer, objective, optimizer, scheduler, train_sources,
                   train_size, val_data)


def restore(session: Session, resume: str) -> dict:
    """Load the checkpoint ``resume`` names ('none', 'auto' or a path); returns the step and data stream state."""
    if resume == "none":
        return {"step": 0, "data": {}}
    checkpoint = latest_checkpoint(session.run_dir) if resume == "auto" else resolve_checkpoint(resume)
    if checkpoint is None:
        return {"step": 0, "data": {}}
    _check_resumable(session.cfg, load_config(checkpoint / "config.yaml"), checkpoint)
    return load_checkpoint(checkpoint, session.accelerator, session.objective, session.optimizer,
                           session.scheduler)


RESUME_FIXED = ("train.lr", "train.min_lr", "train.warmup_steps", "train.weight_decay", "train.betas", "train.eps",
                "train.seed", "train.accum_steps", "data.batch_size", "data.train", "data.num_workers",
                "data.shuffle_buffer", "data.captions", "data.augment", "data.views")


def _check_resumable(cfg: Config, saved: Config, checkpoint: Path) -> None:
    """The optimizer, schedule and data stream come back from the checkpoint; a changed setting for them would
    be silently ignored, so it is an error."""
    for key in RESUME_FIXED:
        section, name = key.split(".")
        now, then = getattr(getattr(cfg, section), name), getattr(getattr(saved, section), name)
        if now != then:
            raise ConfigError(f"{key}={now} differs from {then} in {checkpoint}; a resumed run keeps its optimizer, "
                              "schedule and data stream: start a new run_dir to change it")


class Reporter:
    """Progress bar, ``metrics.jsonl``, trackers and held-out evaluation, on the main process."""

    def __init__(self, session: Session, start_step: int):
        self.session, self.accelerator = session, session.accelerator
        main = self.accelerator.is_main_process
        self.log = MetricsLog(session.run_dir / "metrics.jsonl", start_step) if main else None
        self.progress = tqdm(total=session.cfg.train.steps, initial=start_step, desc="train", unit="step",
                             disable=not self.accelerator.is_local_main_process)
        self.window, self.last_step, self.clock = TermWindow(), start_step, time.perf_counter()
        self.data_wait = 0.0

    def record(self, step: int, terms: dict, lr: float) -> None:
        self.window.add(step, terms)
        self.lr = lr
        self.progress.update(1)

    def restart_clock(self, step: int) -> None:
        """Throughput counts training only: restart after start-up, evaluation and checkpointing."""
        self.last_step, self.clock, self.data_wait = step, time.perf_counter(), 0.0

    def flush(self, step: int, position: StreamPosition) -> None:
        """Log the mean terms since the last flush; raises FloatingPointError on a non-finite one."""
        cfg = self.session.cfg
        values = self.window.flush(lambda t: self.accelerator.reduce(t, "mean"))
        bad = position.bad_counts()
        bad_total = self.accelerator.reduce(torch.tensor([float(bad.get(r, 0)) for r in BAD_REASONS],
                                                         device=self.accelerator.device), "sum").tolist()
        now, per_step = time.perf_counter(), cfg.data.batch_size * self.accelerator.num_processes
        samples = position.batches * per_step
        record = {"step": step, "epoch": round(samples / self.session.train_size, 4), "samples": samples,
                  "lr": self.lr, "samples_per_s": round((step - self.last_step) * per_step * cfg.train.accum_steps
                                                        / (now - self.clock), 1),
                  "data_wait": round(self.data_wait / (now - self.clock), 4), **values,
                  **{f"bad/{r}": int(n) for r, n in zip(BAD_REASONS, bad_total) if n}}
        self.last_step, self.clock, self.data_wait = step, now, 0.0
        self.progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                  samples_s=record["samples_per_s"], data_wait=f"{record['data_wait']:.0%}",
                                  bad=int(sum(bad_total)))
        self._write(record)

    def evaluate(self, step: int) -> None:
        session = self.session
        if session.val_data is not None and self.accelerator.is_main_process:
            metrics = evaluate(session.model, session.tokenizer, session.val_data,
                               image_transform(session.model.visual), self.accelerator.device)
            record = {"step": step, **{f"eval/{k}": v for k, v in metrics.items()}}
            self._write(record)
            self.progress.write(f"step {step}: " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
        self.accelerator.wait_for_everyone()

    def _write(self, record: dict) -> None:
        self.accelerator.log(record, step=record["step"])
        if self.log:
            self.log.write(record)

    def close(self) -> None:
        self.progress.close()
        if self.accelerator.is_main_process:
            plot_loss_curve(self.session.run_dir / "metrics.jsonl", self.session.run_dir / "loss_curve.png")


def train(cfg: Config, resume: str = "none") -> Path:
    """Train per ``cfg``; returns the final checkpoint directory. ``resume``: 'none', 'auto' or a checkpoint."""
    if resume == "none" and latest_checkpoint(cfg.run_dir) is not None:
        raise ConfigError(f"run_dir {cfg.run_dir} already holds checkpoints: continue it with --resume auto, or "
                          "choose another run_dir")
    session = build_session(cfg, resuming=resume != "none")
    cfg, accelerator, objective, optimizer = session.cfg, session.accelerator, session.objective, session.optimizer
    state = restore(session, resume)
    if accelerator.is_main_process:
        session.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, session.run_dir / "config.yaml")
    accelerator.init_trackers("vlp", config=_flat(to_dict(cfg)))
    position = StreamPosition(state["data"])
    stream = build_train_stream(cfg.data, session.model.visual, session.tokenizer, cfg.train.seed,
                                accelerator.process_index, accelerator.num_processes, position, session.train_sources)
    batches = iter(stream_loader(stream, cfg.data.num_workers, pin_memory=accelerator.device.type == "cuda"))
    normalize = DeviceNormalize(session.model.visual.mean, session.model.visual.std, accelerator.device)
    reporter = Reporter(session, state["step"])
    reporter.restart_clock(state["step"])
    for step in range(state["step"] + 1, cfg.train.steps + 1):
        waited = time.perf_counter()
        micro_batches = [next(batches) for _ in range(cfg.train.accum_steps)]
        reporter.data_wait += time.perf_counter() - waited
        for batch in micro_batches:
            position.consumed(batch)
        micro_batches = [normalize(_to_device(batch, accelerator.device)) for batch in micro_batches]
        terms = accumulate_gradients(objective, micro_batches, accelerator)
        if cfg.train.grad_clip:
            accelerator.clip_grad_norm_(objective.parameters(), cfg.train.grad_clip)
        optimizer.step()
        lr = session.scheduler.get_last_lr()[0]  # the rate this step used
        session.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        accelerator.unwrap_model(objective).after_optimizer_step(step)
        reporter.record(step, terms, lr)

        last = step == cfg.train.steps
        due_eval = bool(cfg.train.eval_every) and step % cfg.train.eval_every == 0 and not last
        due_checkpoint = step % cfg.train.checkpoint_every == 0 or last
        if step % cfg.train.log_every == 0 or due_eval or due_checkpoint:
            reporter.flush(step, position)  # checks the loss is finite before anything is saved
        if due_checkpoint:
            save_checkpoint(session.run_dir, step, accelerator, objective, optimizer, session.scheduler,
                            position.state_dict(cfg.data.num_workers, accelerator.num_processes), cfg,
                            session.tokenizer, cfg.train.keep_checkpoints)
        if due_eval:
            reporter.evaluate(step)
        if due_eval or due_checkpoint:
            reporter.restart_clock(step)
    if state["step"] < cfg.train.steps:  # a finished run resumed again is not evaluated twice
        reporter.evaluate(cfg.train.steps)
    reporter.close()
    accelerator.end_training()
    return latest_checkpoint(session.run_dir)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
