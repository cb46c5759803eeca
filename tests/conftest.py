import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a stray hub call fails fast instead of hanging
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from vlp.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def tiny_config(tmp_path: Path, *overrides: str, name: str = "tiny.yaml"):
    """configs/tiny.yaml with run_dir under tmp_path and the given key=value overrides."""
    return load_config(CONFIGS / name, [f"run_dir={tmp_path / 'run'}", *overrides])


@pytest.fixture
def tiny(tmp_path):
    return lambda *overrides, name="tiny.yaml": tiny_config(tmp_path, *overrides, name=name)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny model trained for 2 steps, for tests that only need some trained run directory."""
    from vlp.train.loop import train

    tmp = tmp_path_factory.mktemp("tiny_run")
    train(tiny_config(tmp, "train.steps=2", "data.val=null", "data.batch_size=8"))
    return tmp / "run"
