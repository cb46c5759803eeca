"""The training loop, on HF Accelerate: one process, or many under ``accelerate launch`` (DDP, FSDP, DeepSpeed).

Read top to bottom: set up, restore, then per step fetch micro-batches, compute gradients, step, and every so
often log, evaluate and checkpoint. Losses and heads live in the ``Objective``; nothing here knows about them.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from vlp.config import Config, ConfigError, save_config, to_dict
from vlp.data import load_captioned
from vlp.data.stream import ImageTextDataset, SampleStream, stream_loader
from vlp.data.transforms import image_transform
from vlp.eval import evaluate
from vlp.heads import build_heads
from vlp.losses import build_loss
from vlp.models import build_model
from vlp.models.tokenizers import train_sentencepiece
from vlp.objective import Objective
from vlp.train.accumulation import accumulate_gradients
from vlp.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
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

    return [n for n in names if importlib.util.find_spec("torch.utils.tensorboard" if n == "tensorboard" else n)]


def _prepare_tokenizer(cfg: Config, captions: list[str], run_dir: Path, accelerator: Accelerator) -> Config:
    """Train a SentencePiece tokenizer on the training captions when the config asks for one without a path."""
    tok = cfg.model.tokenizer
    if tok.type != "sentencepiece" or tok.path is not None:
        return cfg
    target = run_dir / "tokenizer"
    if accelerator.is_main_process and not target.is_dir():
        train_sentencepiece(captions, tok.vocab_size, target)
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


def train(cfg: Config, resume: str = "none") -> Path:
    """Train per ``cfg``; returns the final checkpoint directory. ``resume``: 'none', 'auto' or a checkpoint."""
    run_dir = Path(cfg.run_dir)
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg.train.precision),
                              log_with=_trackers(cfg.train.trackers) or None,
                              project_config=ProjectConfiguration(str(run_dir), logging_dir=str(run_dir / "logs")))
    set_seed(cfg.train.seed)
    train_data = load_captioned(cfg.data.train, "train")
    val_data = load_captioned(cfg.data.val, "val") if cfg.data.val else None
    cfg = _prepare_tokenizer(cfg, train_data.captions, run_dir, accelerator)
    model, tokenizer = build_model(cfg.model)
    heads, head_weights = build_heads(cfg.heads, model)
    objective = Objective(model, build_loss(cfg.loss), cfg.loss.weight, heads, head_weights)
    if cfg.train.compile:
        model.visual.compile()
        model.text.compile()
    optimizer = build_optimizer(objective, cfg.train, accelerator.device)
    scheduler = cosine_schedule(optimizer, cfg.train)
    objective, optimizer = accelerator.prepare(objective, optimizer)

    checkpoint = latest_checkpoint(run_dir) if resume == "auto" else None if resume == "none" else Path(resume)
    if checkpoint is not None and not checkpoint.is_dir():
        raise ConfigError(f"checkpoint to resume from not found: {checkpoint}")
    state = (load_checkpoint(checkpoint, accelerator, objective, optimizer, scheduler) if checkpoint
             else {"step": 0, "stream_position": 0})
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    accelerator.init_trackers("vlp", config=_flat(to_dict(cfg)))

    stream = SampleStream(len(train_data), cfg.data.batch_size, cfg.train.seed, accelerator.process_index,
                          accelerator.num_processes, start=state["stream_position"])
    dataset = ImageTextDataset(train_data.pil, train_data.captions,
                               image_transform(model.visual, train=cfg.data.augment))
    batches = iter(stream_loader(dataset, stream, tokenizer, cfg.data.num_workers))
    log = MetricsLog(run_dir / "metrics.jsonl", state["step"]) if accelerator.is_main_process else None
    window, position = TermWindow(), state["stream_position"]
    global_batch = cfg.data.batch_size * accelerator.num_processes * cfg.train.accum_steps
    progress = tqdm(range(state["step"] + 1, cfg.train.steps + 1), initial=state["step"], total=cfg.train.steps,
                    disable=not accelerator.is_local_main_process, desc="train", unit="step")
    started, last_logged = time.perf_counter(), state["step"]

    def run_eval(step: int) -> None:
        if val_data is not None and accelerator.is_main_process:
            metrics = evaluate(accelerator.unwrap_model(objective).model, tokenizer, val_data,
                               image_transform(model.visual), accelerator.device)
            record = {"step": step, **{f"eval/{k}": v for k, v in metrics.items()}}
            log.write(record)
            accelerator.log(record, step=step)
            progress.write(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in record.items()))
        accelerator.wait_for_everyone()

    def checkpoint_now(step: int) -> None:
        save_checkpoint(run_dir, step, accelerator, objective, optimizer, scheduler, position, cfg,
                        cfg.model.tokenizer.path if cfg.model.tokenizer.type == "sentencepiece" else None,
                        cfg.train.keep_checkpoints)

    for step in progress:
        micro_batches = [_to_device(next(batches), accelerator.device) for _ in range(cfg.train.accum_steps)]
        position += cfg.train.accum_steps
        terms = accumulate_gradients(objective, micro_batches, accelerator)
        if cfg.train.grad_clip:
            accelerator.clip_grad_norm_(objective.parameters(), cfg.train.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        accelerator.unwrap_model(objective).after_optimizer_step(step)
        window.add(step, terms)

        due_eval = cfg.train.eval_every and step % cfg.train.eval_every == 0
        due_checkpoint = step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps
        if step % cfg.train.log_every == 0 or due_eval or due_checkpoint:
            values = window.flush(lambda t: accelerator.reduce(t, "mean"))  # raises on a non-finite term
            elapsed, started = time.perf_counter() - started, time.perf_counter()
            record = {"step": step, "epoch": round(stream.epoch(position), 4), "samples": position * cfg.data.batch_size
                      * accelerator.num_processes, "lr": scheduler.get_last_lr()[0],
                      "samples_per_s": round((step - last_logged) * global_batch / elapsed, 1), **values}
            last_logged = step
            progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                 samples_s=record["samples_per_s"])
            accelerator.log(record, step=step)
            if log:
                log.write(record)
        if due_checkpoint:
            checkpoint_now(step)
        if due_eval and step != cfg.train.steps:
            run_eval(step)
    progress.close()
    run_eval(cfg.train.steps)
    if accelerator.is_main_process:
        plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
    accelerator.end_training()
    return latest_checkpoint(run_dir)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
