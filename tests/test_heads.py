"""The image-tower heads (vlp/heads): each trains the image tower and all its own parameters, costs nothing when
off, reads the views it needs, and keeps an EMA teacher that stays out of the optimizer, follows DINO's momentum
schedule, resumes exactly from a checkpoint and stays identical across two DDP processes.

Run as a script (``python tests/test_heads.py KEY=VALUE ...``), this file is one process of the two-process
test: it trains with a head that also saves its state after every step, so the ranks can be compared.
"""
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlp.config import ConfigError, ViewsConfig, load_config
from vlp.data.masks import MASKS
from vlp.heads import HEADS, build_heads
from vlp.heads.self_distill import SelfDistillConfig, SelfDistillHead
from vlp.heads.teacher import momentum_at
from vlp.losses import build_loss
from vlp.models import build_model
from vlp.models.tokenizers import train_sentencepiece
from vlp.objective import Objective
from vlp.train.optim import build_optimizer

from conftest import CONFIGS, REPO

SMALL_DINO = {"prototypes": 64, "hidden_dim": 32, "bottleneck_dim": 16}
CASES = {
    "self_distill": {"self_distill": SMALL_DINO},
    "self_distill_ibot": {"self_distill": {**SMALL_DINO, "ibot": True}},
    "mim_pixel_simmim": {"mim_pixel": {}},
    "mim_pixel_mae": {"mim_pixel": {"mode": "drop", "decoder_layers": 1, "decoder_width": 16, "decoder_heads": 2}},
    "mim_feature_cosine": {"mim_feature": {}},
    "mim_feature_smooth_l1": {"mim_feature": {"loss": "smooth_l1", "predictor_layers": 2}},
    "slip": {"slip": {"hidden_dim": 32, "out_dim": 16}},
}
BATCH = 6


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from vlp.data import load_default

    return str(train_sentencepiece(load_default("train").captions[:500], 128, tmp_path_factory.mktemp("tok")))


def build(tokenizer_dir, sections: dict, *overrides: str, total_steps: int = 10):
    cfg = load_config(CONFIGS / "tiny.yaml", [f"model.tokenizer.path={tokenizer_dir}", *overrides])
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg.model)
    heads, weights = build_heads(sections, model, total_steps)
    return Objective(model, build_loss(cfg.loss), cfg.loss.weight, heads, weights), tokenizer


def views_batch(tokenizer, mask_ratio=(0.5, 0.5)) -> dict:
    from vlp.data import load_default

    generator = torch.Generator().manual_seed(1)
    mask = MASKS.get("block")(4, list(mask_ratio))
    return {"images": torch.randn(BATCH, 3, 28, 28, generator=generator),
            "global_crops": torch.randn(BATCH, 2, 3, 28, 28, generator=generator),
            "local_crops": torch.randn(BATCH, 2, 3, 14, 14, generator=generator),
            "mim_mask": torch.stack([mask(generator) for _ in range(BATCH)]),
            "global_crop_masks": torch.stack([mask(generator) for _ in range(2 * BATCH)]).view(BATCH, 2, 4, 4),
            "tokens": tokenizer(load_default("train").captions[:BATCH])}


def tower_grads(objective, batch) -> tuple[dict, dict]:
    out = objective(batch)
    out["loss"].backward()
    return out, {n: p.grad.clone() for n, p in objective.model.visual.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", list(CASES))
def test_a_head_trains_the_image_tower_and_every_parameter_of_its_own(case, tokenizer_dir):
    sections = CASES[case]
    plain, tokenizer = build(tokenizer_dir, {})
    batch = views_batch(tokenizer)
    _, plain_grads = tower_grads(plain, batch)
    objective, _ = build(tokenizer_dir, sections)
    out, grads = tower_grads(objective, batch)
    (name,) = sections
    head = objective.heads[name]
    assert set(out) - set(plain(batch)) and all(torch.isfinite(v) for v in out.values())
    assert set(grads) == set(plain_grads)
    assert max((grads[n] - plain_grads[n]).abs().max().item() for n in grads) > 1e-6
    for early in ("visual.conv1.weight", "visual.transformer.resblocks.0.mlp.c_fc.weight"):
        assert grads[early].abs().sum() > 0
    trained = {n: p for n, p in head.named_parameters() if p.requires_grad}
    assert trained, "the head has parameters of its own"
    for param_name, param in trained.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{case}: {param_name} got no gradient"
    frozen = [n for n, p in head.named_parameters() if not p.requires_grad]
    assert all(n.startswith("teacher.") for n in frozen) and all(head.get_parameter(n).grad is None for n in frozen)


def test_heads_off_add_no_parameters_and_heads_on_leave_the_model_as_it_is(tokenizer_dir):
    plain, _ = build(tokenizer_dir, {})
    assert all(k.startswith("model.") for k in plain.state_dict())
    count = sum(p.numel() for p in plain.model.parameters())
    assert sum(p.numel() for p in plain.parameters()) == count
    for sections in CASES.values():
        objective, _ = build(tokenizer_dir, sections)
        assert sum(p.numel() for p in objective.model.parameters()) == count  # the mask token is the head's
        assert sum(p.numel() for p in objective.parameters()) > count


@pytest.mark.parametrize("case, missing, setting", [
    ("self_distill", "global_crops", "data.views.global_crops"),
    ("self_distill_ibot", "global_crop_masks", "data.views.mask"), ("mim_pixel_simmim", "mim_mask", "data.views.mask"),
    ("mim_feature_cosine", "mim_mask", "data.views.mask"), ("slip", "global_crops", "data.views.global_crops")])
def test_a_missing_view_names_the_setting_that_makes_it(case, missing, setting, tokenizer_dir):
    objective, tokenizer = build(tokenizer_dir, CASES[case])
    batch = views_batch(tokenizer)
    del batch[missing]
    with pytest.raises(ConfigError, match=f"heads.{case.split('_')[0]}.*needs the batch field '{missing}': set "
                                          f"{setting}"):
        objective(batch)


def test_token_heads_need_a_vit_and_mae_needs_a_fixed_ratio(tokenizer_dir):
    with pytest.raises(ConfigError, match=r"heads.mim_pixel needs a ViT image tower .* got TimmTower"):
        build(tokenizer_dir, CASES["mim_pixel_simmim"], "model.image.type=timm", "model.image.name=test_resnet",
              "model.image.kwargs={}")
    objective, tokenizer = build(tokenizer_dir, CASES["mim_pixel_mae"])
    with pytest.raises(ConfigError, match=r"mode=drop needs the same number .* set data.views.mask_ratio to \[r, r\]"):
        objective(views_batch(tokenizer, mask_ratio=(0.2, 0.8)))
    with pytest.raises(ConfigError, match="mode=drop needs heads.mim_pixel.decoder_layers >= 1"):
        build(tokenizer_dir, {"mim_pixel": {"mode": "drop"}})


@pytest.mark.parametrize("mask_patch_size, ratio", [(0, 0.25), (0, 0.5), (14, 0.25), (14, 0.75)])
@pytest.mark.parametrize("kind", ["random", "block"])
def test_masks_cover_the_exact_ratio_in_whole_mask_cells(kind, mask_patch_size, ratio):
    """On a 28-pixel image with 7-pixel patches (a 4 x 4 grid), 14-pixel mask cells are aligned 2 x 2 squares of
    patches, and the masked fraction is exactly the ratio on the cell grid."""
    from types import SimpleNamespace

    from vlp.config import AugmentConfig
    from vlp.data.transforms import TrainViews

    tower = SimpleNamespace(image_size=28, patch_size=7, interpolation="bilinear")
    views = TrainViews(tower, AugmentConfig(), ViewsConfig(mask=kind, mask_ratio=[ratio, ratio],
                                                           mask_patch_size=mask_patch_size))
    generator, cell = torch.Generator().manual_seed(0), (mask_patch_size or 7) // 7
    for _ in range(10):
        mask = views.mask(generator).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
        assert mask.shape == (4, 4) and int(mask.sum()) == round(ratio * (4 // cell) ** 2) * cell ** 2
        cells = mask.view(4 // cell, cell, 4 // cell, cell)
        assert torch.equal(cells.all(dim=(1, 3)), cells.any(dim=(1, 3)))  # each cell wholly masked or not
    with pytest.raises(ValueError, match="mask_patch_size=10 must be a multiple of the patch size 7"):
        TrainViews(tower, AugmentConfig(), ViewsConfig(mask=kind, mask_patch_size=10))


def test_small_block_masks_meet_the_target_and_rectangles_keep_the_aspect_bound():
    """BEiT/GMML blocks on a 4 x 4 grid: the count is exact, and a mask that is one rectangle keeps BEiT's aspect
    bound (3, plus rounding)."""
    mask = MASKS.get("block")
    generator = torch.Generator().manual_seed(0)
    for count in (4, 6):
        for _ in range(20):
            drawn = mask(4, [count / 16, count / 16])(generator)
            rows, cols = drawn.any(1).nonzero().flatten(), drawn.any(0).nonzero().flatten()
            box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
            if int(drawn.sum()) == box:  # a rectangle: its sides keep BEiT's aspect bound
                sides = sorted(((rows[-1] - rows[0] + 1).item(), (cols[-1] - cols[0] + 1).item()))
                assert sides[1] <= 3 * sides[0] + 1
            assert int(drawn.sum()) == count


def test_the_ema_teacher_is_out_of_the_optimizer_and_follows_the_momentum_schedule(tokenizer_dir):
    assert [momentum_at(s, 100, 0.996) for s in (0, 50, 100, 200)] == pytest.approx([0.996, 0.998, 1.0, 1.0])
    objective, tokenizer = build(tokenizer_dir, CASES["self_distill"], total_steps=100)
    head = objective.heads["self_distill"]
    optimizer = build_optimizer(objective, load_config(CONFIGS / "tiny.yaml").train, torch.device("cpu"))
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    teacher = list(head.teacher.parameters())
    assert teacher and not in_optimizer & {id(p) for p in teacher}
    assert in_optimizer == {id(p) for p in objective.parameters() if p.requires_grad}
    out = objective(views_batch(tokenizer))
    out["loss"].backward()
    before = [p.clone() for p in teacher]
    optimizer.step()
    stash = head.pending[0]["center"].clone()
    objective.after_optimizer_step(51)  # the update after step 51 uses the momentum of step 50: 0.998
    students = list(objective.model.visual.parameters()) + list(head.projection.parameters())
    for old, new, student in zip(before, teacher, students):
        assert torch.allclose(new, 0.998 * old + 0.002 * student, atol=1e-7)
    assert any(not torch.equal(old, new) for old, new in zip(before, teacher))
    assert torch.allclose(head.center, 0.1 * stash) and head.pending == []
    assert {k for k in objective.state_dict() if k.startswith("heads.self_distill.teacher.copies.tower.")}


def test_teacher_temperature_warms_up_linearly():
    head = SelfDistillHead.__new__(SelfDistillHead)
    head.cfg = SelfDistillConfig(warmup_teacher_temp=0.04, teacher_temp=0.07, teacher_temp_warmup_steps=30)
    assert [head.teacher_temp(s) for s in (0, 15, 30, 99)] == pytest.approx([0.04, 0.055, 0.07, 0.07])


@pytest.mark.slow
def test_a_run_with_every_head_resumes_exactly_from_its_checkpoint(tokenizer_dir, tmp_path):
    """Every head on (configs/heads_tiny.yaml): a run resumed from the step-2 checkpoint of another logs the same
    losses for steps 3 and 4 and ends with the same weights, EMA teachers and centers included."""
    from vlp.train.loop import train

    def config(run: str, steps: int = 4):
        return load_config(CONFIGS / "heads_tiny.yaml", [f"run_dir={tmp_path / run}", f"train.steps={steps}",
                                                         "train.checkpoint_every=2", "data.val=null",
                                                         "data.batch_size=8", f"model.tokenizer.path={tokenizer_dir}"])

    reference = train(config("reference"))
    resumed = train(config("resumed"), resume=str(tmp_path / "reference/checkpoints/step_0000002"))
    losses = {run: {r["step"]: r for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())}
              for run in ("reference", "resumed")}
    assert sorted(losses["resumed"]) == [3, 4]
    for step in (3, 4):
        for term in ("loss", "contrastive", "dino", "ibot", "mim_pixel", "mim_feature", "slip"):
            assert losses["resumed"][step][term] == pytest.approx(losses["reference"][step][term], abs=1e-6), term
    expected, got = load_file(str(reference / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert any(".teacher.copies." in k for k in expected) and "heads.self_distill.center" in expected
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.allclose(got[key], value, atol=1e-6), key


@pytest.mark.slow
def test_two_processes_keep_identical_teachers(tokenizer_dir, tmp_path):
    """``accelerate launch`` with two DDP processes and different data per rank: after every step both ranks hold
    the same EMA teacher, center and temperature (the student's DDP-averaged update drives the teacher's, and the
    center is all-reduced), and the run logs each head term."""
    from test_distributed import free_port, run_concurrently, subprocess_env

    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(CONFIGS / "accelerate" / "ddp_cpu2.yaml"), "--main_process_port", str(free_port()), __file__,
               f"run_dir={tmp_path / 'run'}", "train.steps=3", "data.val=null", "data.batch_size=4",
               f"model.tokenizer.path={tokenizer_dir}",
               "heads={self_distill_dump: {prototypes: 64, hidden_dim: 32, bottleneck_dim: 16, ibot: true}, "
               "mim_pixel: {}}"]
    run_concurrently([command], tmp_path, subprocess_env(ACCELERATE_USE_CPU="true", VLP_TEST_DUMP=str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 3
    state = [r["state"] for r in ranks]
    assert any(k.startswith("teacher.copies.tower.") for k in state[0]) and state[0]["center"].abs().sum() > 0
    for key in state[0]:
        assert torch.equal(state[0][key], state[1][key]), key
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"contrastive", "dino", "ibot", "mim_pixel"} <= set(logged[-1])


def conv1_counter(tower) -> list[int]:
    """The batch size of every pass through ``tower``'s patch embedding, recorded by a forward hook."""
    sizes = []
    tower.visual.conv1.register_forward_hook(lambda module, args, output: sizes.append(len(args[0])))
    return sizes


def test_ibot_masks_the_global_crops_in_the_dino_passes_and_runs_no_other_view(tokenizer_dir):
    """iBOT as the paper does it: with ``ibot`` the student and the teacher see the tower as often as DINO alone
    (student: the main view for CLIP, the global crops, the local crops; teacher: the global crops once), and the
    main view's ``mim_mask`` is not read."""
    passes = {}
    for case in ("self_distill", "self_distill_ibot"):
        objective, tokenizer = build(tokenizer_dir, CASES[case])
        head = objective.heads["self_distill"]
        student, teacher = conv1_counter(objective.model.visual), conv1_counter(head.teacher["tower"])
        batch = views_batch(tokenizer)
        del batch["mim_mask"]
        objective(batch)["loss"].backward()
        passes[case] = student, teacher
    assert passes["self_distill_ibot"] == passes["self_distill"] == ([BATCH, 2 * BATCH, 2 * BATCH], [2 * BATCH])


def test_the_ibot_term_is_the_masked_patch_loss_of_each_global_crop_against_its_own_teacher_view(tokenizer_dir):
    """The ``ibot`` term follows the global-crop masks: crop by crop, the cross-entropy from the teacher's patch
    distributions of the unmasked crop to the student's of the masked crop, on the masked patches, averaged per
    image then over images and crops; with nothing masked it is 0, and other masks give another value."""
    import torch.nn.functional as F

    objective, tokenizer = build(tokenizer_dir, CASES["self_distill_ibot"])
    head, tower = objective.heads["self_distill"], objective.model.visual
    batch = views_batch(tokenizer)
    with torch.no_grad():
        terms = head(batch, {}, objective.model)
        expected = []
        for crop, mask in zip(batch["global_crops"].unbind(1), batch["global_crop_masks"].unbind(1)):
            target = F.softmax(head.teacher["projection"](head.teacher["tower"].forward_tokens(crop)["patch_tokens"])
                               / head.temperature, dim=-1)  # the patch center starts at 0
            student = head.projection(tower.forward_tokens(crop, mask, head.mask_token)["patch_tokens"])
            per_patch = -(target * F.log_softmax(student / head.cfg.student_temp, dim=-1)).sum(-1)
            mask = mask.flatten(1).float()
            expected.append(((per_patch * mask).sum(1) / mask.sum(1)).mean())
        assert terms["ibot"] == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
        flipped = {**batch, "global_crop_masks": batch["global_crop_masks"].flip(1)}
        assert abs(head(flipped, {}, objective.model)["ibot"] - terms["ibot"]) > 1e-4
        unmasked = {**batch, "global_crop_masks": torch.zeros_like(batch["global_crop_masks"])}
        assert head(unmasked, {}, objective.model)["ibot"] == 0


@pytest.mark.parametrize("kind", ["random", "block"])
def test_each_global_crop_gets_its_own_mask_of_the_configured_ratio(kind, tokenizer_dir):
    """``global_crop_masks`` [B, V, h, w]: one mask per global crop from the ``data.views.mask`` generator, at the
    exact ratio, through the collate; ``mim_mask`` is drawn first, so it is the same as without global crops."""
    from types import SimpleNamespace

    from PIL import Image

    from vlp.config import AugmentConfig
    from vlp.data.pipeline import CollateBatch
    from vlp.data.transforms import TrainViews

    _, tokenizer = build(tokenizer_dir, {})
    tower, image = SimpleNamespace(image_size=28, patch_size=7, interpolation="bilinear"), Image.new("RGB", (40, 40))
    views = {crops: TrainViews(tower, AugmentConfig(), ViewsConfig(global_crops=crops, mask=kind,
                                                                    mask_ratio=[0.25, 0.25], mask_patch_size=14))
             for crops in (0, 3)}
    batches = {crops: CollateBatch(tokenizer)([{**made(image, torch.Generator().manual_seed(seed)), "caption": "a",
                                                "caption_source": "txt"} for seed in range(8)])
               for crops, made in views.items()}
    masks = batches[3]["global_crop_masks"]
    assert masks.shape == (8, 3, 4, 4) and masks.dtype == torch.bool and "global_crop_masks" not in batches[0]
    assert masks.sum(dim=(2, 3)).eq(4).all()  # 25% of a 2 x 2 grid of 14-pixel cells: one cell, 4 patches
    assert any(not torch.equal(crop_masks[0], crop_masks[1]) for crop_masks in masks)
    assert torch.equal(batches[3]["mim_mask"], batches[0]["mim_mask"])


@pytest.fixture(scope="module")
def teacher_files(tokenizer_dir, tmp_path_factory) -> dict:
    """A tiny run trained for 2 steps from another seed than ``build``'s, with an EMA ``mim_feature`` head of its
    own (so its checkpoint holds a second copy of the tower), and its image tower saved in every form a frozen
    teacher accepts. Returns the paths by form, the tower's weights and the checkpoint's EMA copy of them."""
    from safetensors.torch import save_file

    from vlp.api import load
    from vlp.export.open_clip import open_clip_state_dict
    from vlp.train.loop import train

    tmp = tmp_path_factory.mktemp("teacher")
    checkpoint = train(load_config(CONFIGS / "tiny.yaml", [
        f"run_dir={tmp / 'run'}", "train.steps=2", "train.seed=1", "data.val=null", "data.batch_size=8",
        f"model.tokenizer.path={tokenizer_dir}", "heads={mim_feature: {}}", "data.views.mask=block"]))
    saved = load_file(str(checkpoint / "model.safetensors"))
    tower = {k.removeprefix("model.visual."): v for k, v in saved.items() if k.startswith("model.visual.")}
    ema = {k.removeprefix("heads.mim_feature.teacher.copies.tower."): v for k, v in saved.items()
           if k.startswith("heads.mim_feature.teacher.copies.tower.")}
    open_clip = {f"module.{k}": v for k, v in open_clip_state_dict(load(checkpoint, device="cpu").model).items()}
    torch.save({"epoch": 2, "name": "tiny", "state_dict": open_clip}, tmp / "open_clip.pt")  # as OpenCLIP trains
    save_file(tower, str(tmp / "tower.safetensors"))
    save_file({k.removeprefix("visual."): v for k, v in tower.items()}, str(tmp / "vision_transformer.safetensors"))
    paths = {"checkpoint_dir": checkpoint, "model.safetensors": checkpoint / "model.safetensors",
             "open_clip.pt": tmp / "open_clip.pt", "tower.safetensors": tmp / "tower.safetensors",
             "vision_transformer.safetensors": tmp / "vision_transformer.safetensors"}
    return {"paths": paths, "tower": tower, "ema": ema}


@pytest.mark.parametrize("form", ["checkpoint_dir", "model.safetensors", "open_clip.pt", "tower.safetensors",
                                  "vision_transformer.safetensors"])
def test_a_frozen_teacher_loads_the_tower_of_a_local_file_and_never_changes(form, teacher_files, tokenizer_dir):
    """``heads.mim_feature.teacher: PATH``: the teacher holds the file's image tower (not the student's random
    init, nor the EMA copy a vlp checkpoint also holds), gets no gradient and stays as loaded through an optimizer
    step and ``after_optimizer_step``, while the student learns from a finite loss."""
    expected = teacher_files["tower"]
    objective, tokenizer = build(tokenizer_dir, {"mim_feature": {"teacher": str(teacher_files["paths"][form])}})
    head, student = objective.heads["mim_feature"], objective.model.visual
    frozen = head.teacher["tower"]
    conv1 = "visual.conv1.weight"
    assert frozen.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in frozen.state_dict().items())
    assert not torch.equal(student.state_dict()[conv1], expected[conv1])
    assert not torch.equal(teacher_files["ema"][conv1], expected[conv1])
    optimizer = build_optimizer(objective, load_config(CONFIGS / "tiny.yaml").train, torch.device("cpu"))
    assert not {id(p) for g in optimizer.param_groups for p in g["params"]} & {id(p) for p in frozen.parameters()}
    student_before = student.visual.conv1.weight.detach().clone()
    out = objective.train()(views_batch(tokenizer))
    out["loss"].backward()
    assert torch.isfinite(out["mim_feature"]) and out["mim_feature"] > 0
    assert student.visual.conv1.weight.grad.abs().sum() > 0 and head.mask_token.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in frozen.parameters()) and not frozen.training
    optimizer.step()
    objective.after_optimizer_step(1)
    assert not torch.equal(student.visual.conv1.weight, student_before)
    assert all(torch.equal(value, expected[key]) for key, value in frozen.state_dict().items())


def test_a_frozen_teacher_that_is_missing_or_of_another_tower_is_one_line_naming_the_file(tokenizer_dir, tmp_path):
    """A path that does not exist, a tower of another width (misshapen tensors) and a deeper tower (tensors the
    teacher lacks, which must not load cut) each stop the build with one line naming the file."""
    from safetensors.torch import save_file

    other = "model.image.kwargs={{width: {}, layers: {}, head_width: 16, patch_size: 7, mlp_ratio: 2.0}}"
    for name, width, layers in (("wider", 48, 2), ("deeper", 32, 3)):
        objective, _ = build(tokenizer_dir, {}, other.format(width, layers))
        save_file(objective.model.visual.state_dict(), str(tmp_path / f"{name}.safetensors"))
    for file, problem in ((tmp_path / "no_run" / "checkpoints" / "step_0000002", "weights file not found"),
                          (tmp_path / "wider.safetensors", r"'visual.class_embedding' has shape \(48,\)"),
                          (tmp_path / "deeper.safetensors", "unexpected tensors, e.g. ..visual.transformer.resbl")):
        with pytest.raises(ConfigError, match=problem) as raised:
            build(tokenizer_dir, {"mim_feature": {"teacher": str(file)}})
        assert str(file) in str(raised.value) and "\n" not in str(raised.value)


def _worker(overrides: list[str]) -> None:
    """One rank of ``test_two_processes_keep_identical_teachers``: the real training loop, with a self-distillation
    head that saves its whole state (teacher, centers, temperature) after each optimizer step."""
    import torch.distributed as dist

    from vlp.train.loop import train

    @HEADS.register("self_distill_dump")
    class DumpingSelfDistill(SelfDistillHead):
        def after_optimizer_step(self, model, step):
            super().after_optimizer_step(model, step)
            state = {k: v.detach().clone() for k, v in self.state_dict().items()}
            torch.save({"step": step, "state": state}, Path(os.environ["VLP_TEST_DUMP"]) / f"rank{dist.get_rank()}.pt")

    train(load_config(CONFIGS / "heads_tiny.yaml", overrides))


if __name__ == "__main__":
    os.chdir(REPO)
    _worker(sys.argv[1:])
