"""``vlp recipe run --engine ray`` against a local Ray instance, on test_recipes.py's planted shards: the same recipe
writes the same bytes as the local engine (output shards, decisions, report), with the same accounting; a stage
with a batch step runs on an actor that loads its model once; a run stopped part-way on the local engine finishes
on Ray; a model step (clip_score) scores on an actor as locally; a finished run is left alone; a step's one-line
error on a worker is the local engine's line. Without Ray,
``--engine ray`` is one line saying how to install it."""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from test_recipes import (  # noqa: F401  (shards: the fixture)
    CLEAN_STEPS, PLANTED, decisions, last_line, run, shards, snapshot, write_recipe)
from vlp.cli import main

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""Steps for the Ray engine's tests: a batch step standing in for a captioning model, which records each load of
its model as a file in ``loads``; one whose model does not load; a step that stops the run at the key
VLP_TEST_STOP_AT names."""
import os
from dataclasses import dataclass
from pathlib import Path

from vlp.errors import ConfigError
from vlp.recipes import STEPS, BatchStep, SampleStep, keep


@dataclass
class StopAtConfig:
    pass


@STEPS.register("test_stop_at")
class StopAt(SampleStep):
    Config = StopAtConfig

    def apply(self, sample):
        if sample.key == os.environ.get("VLP_TEST_STOP_AT"):
            raise RuntimeError(f"stopped at {sample.key}")
        return keep()


@dataclass
class FakeCaptionerConfig:
    loads: str = "."
    batch_size: int = 4


@STEPS.register("test_fake_captioner")
class FakeCaptioner(BatchStep):
    Config = FakeCaptionerConfig
    model = None

    def apply_batch(self, samples):
        if self.model is None:
            self.model = "loaded"
            Path(self.config.loads, f"{os.getpid()}-{id(self)}").touch()
        for sample in samples:
            sample.add_captions(self.name, [f"a synthetic caption of {sample.key}"], "test:fake-model")
        return [keep(batch=len(samples)) for _ in samples]


@dataclass
class UnloadableConfig:
    model: str = "nowhere"


@STEPS.register("test_unloadable")
class Unloadable(BatchStep):
    Config = UnloadableConfig

    def apply_batch(self, samples):
        raise ConfigError(f"config key 'model': cannot load {self.config.model}")
'''
# stage 0: the sample steps (Ray tasks) and exact_dedup's signatures; stage 1: a rewrite and a batch step (an actor)
STEPS = CLEAN_STEPS.replace("  - exact_dedup: {}\n", "  - test_stop_at\n  - exact_dedup: {}\n")
STOP_AT = "fm0021"  # in input shard 2


@pytest.fixture(scope="module")
def ray_plugin(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray_plugin")
    (folder / "recipe_ray_test_steps.py").write_text(PLUGIN)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def ray_instance(ray_plugin):
    ray = pytest.importorskip("ray", reason="the ray engine's tests need Ray: pip install 'vlp[ray]'")
    pytest.importorskip("ray.data", reason="the ray engine's tests need Ray Data: pip install 'vlp[ray]'")
    # a new instance even where RAY_ADDRESS names a cluster; its workers import the test steps from the plugin
    # folder, as a cluster's nodes would from an installed package
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ray_plugin)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(shards, ray_plugin, tmp_path_factory):  # noqa: F811
    """The recipe run on the local engine with two worker processes: (recipe, output, model loads directory)."""
    tmp = tmp_path_factory.mktemp("ray_reference")
    loads = tmp / "loads"
    loads.mkdir()
    steps = STEPS + f"  - {{type: test_fake_captioner, loads: '{loads}'}}\n"
    recipe = write_recipe(tmp / "recipe.yaml", steps, shard_size=7, imports=["recipe_ray_test_steps"])
    assert main(["recipe", "run", str(recipe), f"input={shards}", f"output={tmp / 'out'}", "workers=2"]) == 0
    return recipe, tmp / "out", loads


def assert_same_run(out: Path, expected: Path) -> None:
    """Every file the same bytes, but recipe.yaml, which records how the run went (output, engine, workers)."""
    finished, wanted = snapshot(out), snapshot(expected)
    settings = [yaml.safe_load(files.pop("recipe.yaml")) for files in (finished, wanted)]
    for resolved in settings:
        del resolved["output"], resolved["engine"], resolved["workers"]
    assert settings[0] == settings[1]
    assert sorted(finished) == sorted(wanted) and sum(name.endswith(".tar") for name in finished) == 4
    assert [name for name in finished if finished[name] != wanted[name]] == []
    assert not (out / ".work").exists()


@pytest.mark.slow
def test_ray_writes_the_bytes_the_local_engine_writes(ray_instance, reference, shards, tmp_path, capsys):  # noqa: F811
    recipe, expected, loads = reference
    out, loaded = tmp_path / "out", set(loads.iterdir())
    code, stdout, err = run(capsys, recipe, f"input={shards}", f"output={out}", "--engine", "ray")
    assert code == 0, err
    assert "kept 28 of 41 samples in 4 shards" in stdout
    assert_same_run(out, expected)
    assert yaml.safe_load((out / "recipe.yaml").read_text())["engine"] == "ray"

    records = decisions(out)  # input = kept + dropped, each drop by one step for one reason
    assert {r["key"]: (r["step"], r["reason"]) for r in records if not r["kept"]} == PLANTED
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] == {"input": 41, "kept": 28, "dropped": 13}
    assert Counter({(row["name"], reason): n for row in report["steps"] for reason, n in row["dropped"].items()}) \
        == Counter(PLANTED.values())

    (load,) = set(loads.iterdir()) - loaded  # the model stage's one actor loaded its model once, for all 4 shards
    assert not load.name.startswith(f"{os.getpid()}-")  # in a Ray worker, not in this process

    files = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.rglob("*") if path.is_file()}
    code, stdout, _ = run(capsys, recipe, f"input={shards}", f"output={out}", "--engine", "ray")
    assert code == 0 and "kept 28 of 41 samples in 4 shards" in stdout
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.rglob("*") if path.is_file()} == files


@pytest.mark.slow
def test_a_model_step_on_ray_scores_as_on_the_local_engine(ray_instance, shards, tiny_run, tmp_path,
                                                            capsys):  # noqa: F811
    """clip_score on a Ray actor, its images prepared on the actor's threads and the read check's decode shared,
    writes the bytes two local worker processes do."""
    runs = {}
    for engine in ("local", "ray"):
        code, _, err = run(capsys, REPO / "data_recipes/clip_score.yaml", f"input={shards}",
                           f"output={tmp_path / engine}", f"steps.clip_score.model={tiny_run}",
                           "steps.clip_score.batch_size=8", "workers=2", "--engine", engine)
        assert code == 0, err
        runs[engine] = snapshot(tmp_path / engine)
        assert yaml.safe_load(runs[engine].pop("recipe.yaml"))["engine"] == engine
    assert runs["ray"] == runs["local"]
    scored = [r for r in decisions(tmp_path / "ray") if "clip_score" in r["scores"]]
    assert len(scored) == 37 and sum(r["kept"] for r in scored) == 11  # the 37 readable samples, the best 30%


@pytest.mark.slow
def test_a_run_stopped_on_the_local_engine_finishes_on_ray(ray_instance, reference, shards, tmp_path, capsys,
                                                            monkeypatch):  # noqa: F811
    recipe, expected, _ = reference
    out = tmp_path / "out"
    monkeypatch.setenv("VLP_TEST_STOP_AT", STOP_AT)
    with pytest.raises(RuntimeError, match=f"stopped at {STOP_AT}"):
        main(["recipe", "run", str(recipe), f"input={shards}", f"output={out}", "workers=0"])
    monkeypatch.delenv("VLP_TEST_STOP_AT")
    committed = {path: path.stat().st_mtime_ns for path in (out / "decisions" / "stage0").glob("*.jsonl")}
    assert sorted(path.name for path in committed) == ["00000.jsonl", "00001.jsonl"]

    code, _, err = run(capsys, recipe, f"input={shards}", f"output={out}", "--engine", "ray")
    assert code == 0, err
    assert_same_run(out, expected)
    assert {path: path.stat().st_mtime_ns for path in committed} == committed  # committed shards were skipped


@pytest.mark.slow
def test_a_steps_one_line_error_on_a_ray_worker_is_the_local_engines_line(ray_instance, ray_plugin, shards, tmp_path,
                                                                         capsys):  # noqa: F811
    recipe = write_recipe(tmp_path / "recipe.yaml", "\n  - test_unloadable\n", imports=["recipe_ray_test_steps"])
    code, _, err = run(capsys, recipe, f"input={shards}", f"output={tmp_path / 'local'}", "workers=0")
    assert code == 2 and last_line(err) == "vlp recipe: error: config key 'model': cannot load nowhere"
    code, _, ray_err = run(capsys, recipe, f"input={shards}", f"output={tmp_path / 'ray'}", "--engine", "ray")
    assert code == 2 and last_line(ray_err) == last_line(err)


def test_without_ray_the_ray_engine_is_one_line_naming_the_extra(shards, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` finds when Ray is not installed
    recipe = write_recipe(tmp_path / "recipe.yaml", "\n  - caption_length\n")
    code, _, err = run(capsys, recipe, f"input={shards}", f"output={tmp_path / 'out'}", "--engine", "ray")
    assert code == 2 and err == ("vlp recipe: error: engine 'ray' needs Ray, which is not installed: "
                                 "pip install 'vlp[ray]'\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, expected", [
    ("ray.actors=0", "'ray.actors' must be at least 1, got 0"),
    ("ray.gpus_per_actor=-1", "'ray.gpus_per_actor' must be at least 0, got -1.0"),
    ("ray.cpus_per_actor=0", "'ray.cpus_per_actor' must be at least 1, got 0"),
    ("ray.actor=2", "unknown config key 'ray.actor' (did you mean 'actors'?)"),
])
def test_bad_ray_settings_are_one_line(shards, tmp_path, capsys, override, expected):  # noqa: F811
    recipe = write_recipe(tmp_path / "recipe.yaml", "\n  - caption_length\n")
    code, _, err = run(capsys, recipe, f"input={shards}", f"output={tmp_path / 'out'}", override, "--engine", "ray")
    assert code == 2 and err.startswith(f"vlp recipe: error: recipe {recipe}: {expected}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
