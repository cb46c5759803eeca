"""Distributed semantics of the contrastive losses and of contrastive gradient caching, in real processes.

Two gloo ranks (tests/_dist_worker.py) must log, on average, the loss of one process on the same global batch and
hold, after DDP averages them, that process's gradients; K cached micro-batches must give the full batch's
gradients (logit scale and bias counted once); and ``accelerate launch`` over two CPU processes must log the loss
of one process whose micro-batch holds both ranks' samples.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from vlp.config import SourceConfig
from vlp.data.sources import build_source
from vlp.data.stream import SlotStream
from vlp.models.tokenizers import train_sentencepiece
from vlp.objective import FEATURE_KEYS
from vlp.train.accumulation import accumulate_gradients

import _dist_worker as worker
from conftest import CONFIGS, REPO

LOSS_TOL = 1e-5
GRAD_TOL = 1e-5  # relative to the parameter's largest gradient (at least 1): float32 summation-order noise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    # two ranks share two cores: one thread each, or they oversubscribe the machine
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def run_concurrently(commands: list[list[str]], logs_dir, env: dict, timeout: float = 300) -> None:
    """Run ``commands`` side by side; if one fails, stop the others (a rank left alone would wait in its collectives
    until gloo's 30-minute timeout). Fails the test with the failing command's output."""
    logs = [logs_dir / f"command{i}.log" for i in range(len(commands))]
    procs = []
    for command, log in zip(commands, logs):
        with log.open("w") as out:
            procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    deadline = time.monotonic() + timeout
    while (any(p.poll() is None for p in procs) and not any(p.poll() for p in procs)
           and time.monotonic() < deadline):
        time.sleep(0.1)
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the command and the ranks it launched
            proc.wait()
    for command, proc, log in zip(commands, procs, logs):
        assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}:\n{log.read_text()[-4000:]}"


def assert_grads_close(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for name, grad in expected.items():
        scale = max(1.0, grad.abs().max().item())
        err = (actual[name] - grad).abs().max().item()
        assert err <= GRAD_TOL * scale, f"gradient of {name}: max abs difference {err:.3g} (scale {scale:.3g})"


def full_batch_reference(config_name: str, tokenizer_dir: str, *overrides: str):
    """One process, one pass over the whole global batch: the loss terms and every parameter's gradient."""
    objective, tokenizer = worker.build_objective(config_name, tokenizer_dir, *overrides)
    batch = worker.global_batch(tokenizer, multi="loss.type=clip_multi_positive" in overrides)
    out = objective(batch)
    out["loss"].backward()
    return ({name: value.detach() for name, value in out.items()},
            {name: p.grad for name, p in objective.named_parameters()}, objective, batch)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return str(train_sentencepiece(worker.captions(), 128, tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def two_ranks(tokenizer_dir, tmp_path_factory):
    """Every case of the worker, run once by two real gloo ranks: {case: [rank 0 result, rank 1 result]}."""
    out = tmp_path_factory.mktemp("ranks")
    port = str(free_port())
    run_concurrently([[sys.executable, worker.__file__, str(rank), "2", port, tokenizer_dir, str(out)]
                      for rank in range(2)], out, subprocess_env())
    return {case: [torch.load(out / f"{case}_rank{rank}.pt") for rank in range(2)] for case in worker.CASES}


@pytest.fixture
def accelerator():
    """A real single-process Accelerator on CPU; the shared Accelerate state is reset around it."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow  # the two ranks' start-up and imports: ~8 s, shared by the four cases
@pytest.mark.parametrize("case", list(worker.CASES))
def test_two_processes_match_one_process_on_the_global_batch(case, two_ranks, tokenizer_dir):
    """Mean over ranks of the loss, and every parameter's gradient after DDP, equal one process's on the global
    batch: the all-gather's backward returns each rank the other rank's loss gradient on its features."""
    config, _ = worker.CASES[case]
    terms, grads, objective, batch = full_batch_reference(config[0], tokenizer_dir, *config[1:])
    ranks = two_ranks[case]
    assert set(ranks[0]["terms"]) == set(terms)
    for name, value in terms.items():
        mean = (ranks[0]["terms"][name] + ranks[1]["terms"][name]) / 2
        assert abs(mean.item() - value.item()) <= LOSS_TOL, (name, mean.item(), value.item())
    # the other rank's samples are negatives: rank 0's own half scored alone gives another loss
    with torch.no_grad():
        alone = objective(worker.split(batch, 2)[0])["loss"].item()
    assert abs(ranks[0]["terms"]["loss"].item() - alone) > 1e-3
    for rank in ranks:
        assert_grads_close(rank["grads"], grads)
    for name in grads:  # DDP's all-reduce leaves every rank the same gradient
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
    assert grads["model.logit_scale"].abs().item() > 1e-3  # the comparison includes a live scale gradient


@pytest.mark.parametrize("config", [("tiny.yaml",), worker.SIGLIP], ids=["clip", "siglip"])
@pytest.mark.parametrize("accum", [2, 4])
def test_gradient_caching_matches_the_full_batch(config, accum, tokenizer_dir, accelerator):
    terms, grads, _, batch = full_batch_reference(config[0], tokenizer_dir, *config[1:])
    objective, _ = worker.build_objective(config[0], tokenizer_dir, *config[1:])
    prepared = accelerator.prepare(objective)
    cached_terms = accumulate_gradients(prepared, worker.split(batch, accum), accelerator)
    assert set(cached_terms) == set(terms)
    for name, value in terms.items():
        assert abs(cached_terms[name].item() - value.item()) <= LOSS_TOL, name
    cached = {name: p.grad for name, p in objective.named_parameters()}
    assert_grads_close(cached, grads)
    # counted once, not once per micro-batch: spelled out, as it is what the cache's detaching is for
    for key in ("model.logit_scale", "model.logit_bias"):
        if key in grads:
            assert cached[key].item() == pytest.approx(grads[key].item(), rel=1e-5, abs=1e-7), key
            assert abs(grads[key].item()) > 1e-3


def test_gradient_caching_replays_patch_dropout(tokenizer_dir, accelerator):
    """With random patch dropout, each micro-batch's gradient pass must drop the patches its caching pass dropped:
    the result equals one graph over the micro-batches' features drawn in the same order."""
    override = "model.image.patch_dropout=0.5"
    reference, tokenizer = worker.build_objective("tiny.yaml", tokenizer_dir, override)
    micro_batches = worker.split(worker.global_batch(tokenizer), 2)

    def reference_loss(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        outs = [reference.model(mb["images"], mb["tokens"]) for mb in micro_batches]
        features = {key: torch.cat([out[key] for out in outs]) for key in FEATURE_KEYS}
        return reference.loss(**features, logit_scale=outs[-1]["logit_scale"])["contrastive"]

    with torch.no_grad():
        assert abs(reference_loss(7).item() - reference_loss(8).item()) > 1e-4  # the dropout is live
    loss = reference_loss(7)
    loss.backward()
    objective, _ = worker.build_objective("tiny.yaml", tokenizer_dir, override)
    torch.manual_seed(7)
    terms = accumulate_gradients(accelerator.prepare(objective), micro_batches, accelerator)
    assert abs(terms["loss"].item() - loss.item()) <= LOSS_TOL
    assert_grads_close({n: p.grad for n, p in objective.named_parameters()},
                       {n: p.grad for n, p in reference.named_parameters()})


@pytest.mark.parametrize("num_samples", [10, 1000])
def test_ranks_split_the_single_process_samples(num_samples):
    """Rank r of W takes every W-th global position: together the ranks' first draws are, sample for sample and
    augmentation seed for seed, the first draws of one process (also across epoch boundaries, which 10 samples
    cross), so W processes of batch B see the samples of one process of batch W*B."""
    source = build_source(SourceConfig("default"))
    def draws(rank, world, count):
        stream = SlotStream([source], [1.0], seed=3, slot=rank, slots=world, shuffle_buffer=1)
        stream.cursors[0].size = num_samples
        return [(raw.key, seed) for raw, seed in (stream.next() for _ in range(count))]
    one = draws(0, 1, 24)
    ranks = [draws(rank, 2, 12) for rank in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(one)
    assert ranks[0][:4] != ranks[1][:4]


@pytest.mark.slow
def test_accelerate_launch_two_processes_log_the_one_process_loss(tmp_path):
    """The real entry point: ``accelerate launch`` (configs/accelerate/ddp_cpu2.yaml, DDP over gloo) with two
    processes of batch 4 and gradient caching over 2 micro-batches logs the loss of one process of batch 8 with the
    same caching: the same 16 samples per step, the same initialization (seeded, then DDP's broadcast)."""
    train = ["-m", "vlp.cli", "train", "--config", str(CONFIGS / "tiny.yaml"), "train.steps=2",
             "train.accum_steps=2", "data.val=null"]
    two = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(CONFIGS / "accelerate" / "ddp_cpu2.yaml"), "--main_process_port", str(free_port()), *train,
           f"run_dir={tmp_path / 'two'}", "data.batch_size=4"]
    one = [sys.executable, *train, f"run_dir={tmp_path / 'one'}", "data.batch_size=8"]
    run_concurrently([two, one], tmp_path, subprocess_env(ACCELERATE_USE_CPU="true"))

    def steps(run: str) -> dict[int, dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r for r in map(json.loads, lines) if "loss" in r}

    two_steps, one_steps = steps("two"), steps("one")
    assert sorted(two_steps) == sorted(one_steps) == [1, 2]
    for step in (1, 2):
        assert two_steps[step]["samples"] == one_steps[step]["samples"] == 16 * step
    assert two_steps[1]["loss"] == pytest.approx(one_steps[1]["loss"], abs=LOSS_TOL)
    # after one optimizer step on equal gradients the parameters, and so the next loss, still agree
    assert two_steps[2]["loss"] == pytest.approx(one_steps[2]["loss"], abs=1e-4)
    assert two_steps[2]["loss"] != pytest.approx(two_steps[1]["loss"], abs=1e-3)  # the step changed the model
