"""Configuration: YAML plus ``a.b=value`` overrides, type checks, unknown keys, and a saved config that round-trips."""
import dataclasses

import pytest

from vlp.config import Config, ConfigError, ImageTowerConfig, ModelConfig, load_config, save_config

from conftest import CONFIGS

RUN_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml"))


def test_overrides_replace_yaml_values_and_keep_the_rest():
    cfg = load_config(CONFIGS / "tiny.yaml", ["train.steps=7", "model.image.kwargs.width=64", "data.val=null",
                                             "train.lr=1e-3", "model.init_logit_bias=-10", "train.betas=[0.8, 1]",
                                             "model.image.mean=[0, 0.5, 1]", "run_dir=runs/2024"])
    assert cfg.train.steps == 7 and cfg.data.val is None and cfg.run_dir == "runs/2024"
    assert cfg.model.image.kwargs == {"width": 64, "layers": 2, "head_width": 16, "patch_size": 7, "mlp_ratio": 2.0}
    # YAML 1.1 reads 1e-3 as a string; a float key takes it as the number it spells
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.model.init_logit_bias == -10.0 and isinstance(cfg.model.init_logit_bias, float)
    assert cfg.train.betas == [0.8, 1.0] and all(isinstance(b, float) for b in cfg.train.betas)
    assert cfg.model.image.mean == [0.0, 0.5, 1.0]
    assert cfg.model.text.width == 32 and cfg.train.warmup_steps == 5  # from the file
    assert cfg.model.lock_image is False and cfg.train.grad_clip == 1.0  # dataclass defaults


def test_no_file_gives_the_defaults_and_overrides_create_sections():
    assert load_config() == Config()
    cfg = load_config(None, ["model.text.layers=3", "heads.probe.weight=0.5"])
    assert cfg.model.text.layers == 3 and cfg.heads == {"probe": {"weight": 0.5}}


def test_an_empty_yaml_section_takes_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\ntrain:\n")
    assert load_config(tmp_path / "c.yaml", ["model.embed_dim=16"]).model.embed_dim == 16


@pytest.mark.parametrize("override, message", [
    ("train.steps=abc", "config key 'train.steps' expects int, got 'abc'"),
    ("train.steps=1.5", "config key 'train.steps' expects int, got 1.5"),
    ("model.lock_image=1", "config key 'model.lock_image' expects bool, got 1"),
    ("train.lr=fast", "config key 'train.lr' expects float, got 'fast'"),
    ("train.lr=true", "config key 'train.lr' expects float, got True"),
    ("model.image.mean=[a, b, c]", "config key 'model.image.mean[0]' expects float, got 'a'"),
    ("train.betas=0.9", "config key 'train.betas' expects list, got 0.9"),
    ("train.trackers=[1]", "config key 'train.trackers[0]' expects str, got 1"),
    ("model.image.kwargs=3", "config key 'model.image.kwargs' expects dict, got 3"),
    ("model=3", "config section 'model' must be a mapping, got 3"),
    ("train.steps.x=1", "override 'train.steps.x=1': 'steps' is not a section"),
    ("train.steps", "override 'train.steps' must look like key=value"),
    ("model.image.kwargs={a: [}", "override 'model.image.kwargs={a: [}': the value is not valid YAML"),
])
def test_wrong_types_and_malformed_overrides_are_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny.yaml", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override, key, close, section", [
    ("model.image.nmae=vit", "model.image.nmae", "name", ImageTowerConfig),
    ("model.imag.type=timm", "model.imag", "image", ModelConfig),
    ("optimizer.lr=1", "optimizer", None, Config),
])
def test_unknown_keys_are_rejected_with_the_valid_keys(override, key, close, section):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny.yaml", [override])
    message = str(err.value)
    assert message.startswith(f"unknown config key '{key}'")
    assert (f"did you mean '{close}'?" in message) == (close is not None)
    assert message.endswith("valid keys: " + ", ".join(f.name for f in dataclasses.fields(section)))


def test_unknown_key_in_a_yaml_file_is_rejected(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  step: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.step' \(did you mean 'steps'\?\)"):
        load_config(tmp_path / "c.yaml")


def test_missing_or_malformed_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*absent.yaml"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="config file .*bad.yaml is not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="config section '<root>' must be a mapping"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_saved_config_round_trips(tmp_path, name):
    cfg = load_config(CONFIGS / name, ["heads.probe.weight=0.5", "model.image.kwargs.extra=[1, 2]",
                                       "model.init_logit_bias=-10", "data.val=null"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    save_config(load_config(tmp_path / "config.yaml"), tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text() == (tmp_path / "config.yaml").read_text()


@pytest.mark.parametrize("override, message", [
    ("train.checkpoint_every=0", "'train.checkpoint_every' must be at least 1, got 0"),
    ("train.log_every=0", "'train.log_every' must be at least 1, got 0"),
    ("train.accum_steps=0", "'train.accum_steps' must be at least 1, got 0"),
    ("data.batch_size=0", "'data.batch_size' must be at least 1, got 0"),
    ("train.eval_every=-1", "'train.eval_every' must be at least 0, got -1"),
    ("train.trackers=[tensorbord]", "unknown tracker(s) ['tensorbord'] in train.trackers; valid: tensorboard, wandb"),
])
def test_values_that_cannot_work_are_rejected(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny.yaml", [override])
    assert message in str(err.value)
