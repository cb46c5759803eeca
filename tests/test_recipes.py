"""``vlp recipe run`` as users run it, on real shards of Fashion-MNIST images with planted bad samples: exact
accounting, scores in key.json, shards that vlp.data reads back (synthetic captions included), the report, the step
protocol's three kinds, one-line errors, and a run killed with SIGKILL twice that, re-run, ends byte-identical to an
uninterrupted one."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from PIL import Image
from tqdm import tqdm

from datagen import encode, write_shard
from vlp.cli import main
from vlp.data import iter_in_order, load_default, open_sources
from vlp.data.pipeline import caption_candidates
from vlp.recipes import load_recipe

REPO = Path(__file__).resolve().parents[1]
FASHION = load_default("val")
# every planted bad sample, and the (step, reason) it must be dropped as; None is the lost rest of a truncated shard
PLANTED = {"bad_corrupt": ("read", "corrupt_image"), "bad_empty": ("read", "empty_caption"),
           "bad_nocaption": ("read", "missing_caption"), None: ("read", "truncated_shard"),
           "bad_short": ("caption_length", "too_few_words"), "bad_url": ("text_patterns", "url"),
           "bad_html": ("text_patterns", "html"), "bad_repeat": ("unique_words", "repetitive"),
           "bad_german": ("language", "language_de"), "bad_tiny": ("image_size", "too_small"),
           "bad_wide": ("image_size", "extreme_aspect"), "dup_a": ("exact_dedup", "duplicate"),
           "dup_b": ("exact_dedup", "duplicate")}
CLEAN_STEPS = """
  - caption_length: {min_words: 2}
  - text_patterns: {}
  - unique_words: {}
  - language: {keep: [en]}
  - image_size: {min_side: 64, max_aspect: 3.0}
  - exact_dedup: {}
  - rewrite_rules: {count: 2}
"""
PLUGIN = '''
"""Steps for the tests, registered through the recipe's ``imports``: a slow step (to kill a run mid-way), a batch
step standing in for a captioning model, and an analysis-only global step."""
import os
import time
from collections import Counter
from dataclasses import dataclass

from vlp.recipes import STEPS, BatchStep, GlobalStep, SampleStep, keep

MAIN_PID = os.getpid()  # imported before the workers fork: they inherit the main process's pid here


@dataclass
class SleepConfig:
    seconds: float = 0.0


@STEPS.register("test_sleep")
class Sleep(SampleStep):
    Config = SleepConfig

    def apply(self, sample):
        time.sleep(self.config.seconds)
        return keep()


@dataclass
class WhereConfig:
    pass


@STEPS.register("test_where")
class Where(SampleStep):
    Config = WhereConfig

    def apply(self, sample):
        return keep(in_main=float(os.getpid() == MAIN_PID))


@dataclass
class RecaptionConfig:
    batch_size: int = 4


@STEPS.register("test_recaption")
class Recaption(BatchStep):
    Config = RecaptionConfig

    def apply_batch(self, samples):
        for sample in samples:
            sample.add_captions(self.name, [f"a synthetic caption of {sample.key}"], "test:fake-model")
        return [keep(batch=len(samples), in_main=float(os.getpid() == MAIN_PID)) for _ in samples]


@dataclass
class ConceptsConfig:
    pass


@STEPS.register("test_concepts")
class Concepts(GlobalStep):
    Config = ConceptsConfig

    def signatures(self, samples):
        return [sample.caption.rstrip(".").split()[-1] for sample in samples]

    def decide(self, ids, signatures):
        return [keep() for _ in ids]

    def summary(self, ids, signatures, verdicts):
        return dict(sorted(Counter(signatures).items()))
'''


def fashion(index: int, size=(96, 96)) -> bytes:
    """Embedded Fashion-MNIST image ``index``, enlarged to ``size``, as JPEG."""
    return encode(FASHION.pil(index).convert("RGB").resize(size))


def good(index: int) -> tuple[str, dict[str, bytes]]:
    return f"fm{index:04d}", {"jpg": fashion(index), "txt": FASHION.captions[index].encode(),
                              "json": json.dumps({"source_index": index}).encode()}


def planted_shards(root: Path) -> str:
    """Four shards of Fashion-MNIST samples, 28 good ones and the planted bad ones; returns the pattern. Shard 3 is
    cut inside its fifth sample's image: four samples survive and the rest is lost."""
    root.mkdir(parents=True)
    duplicate = good(0)[1]
    jpeg = fashion(40)
    planted = [
        [("bad_corrupt", {"jpg": jpeg[: len(jpeg) // 2], "txt": b"a photo of a cut-off image"}),
         ("bad_empty", {"jpg": fashion(41), "txt": b"   "}),
         ("bad_nocaption", {"jpg": fashion(42)}),
         ("dup_a", {**duplicate, "txt": b"the first image again, in the same shard"})],
        [("bad_short", {"jpg": fashion(43), "txt": b"boot"}),
         ("bad_url", {"jpg": fashion(44), "txt": b"buy this sandal at https://example.com/shop"}),
         ("bad_html", {"jpg": fashion(45), "txt": b"a <b>bold</b> photo of a shirt"}),
         ("dup_b", {**duplicate, "txt": b"the first image once more, in another shard"})],
        [("bad_repeat", {"jpg": fashion(46), "txt": b"shoe shoe shoe shoe shoe shoe"}),
         ("bad_german", {"jpg": fashion(47), "txt": "ein dunkler Schuh mit Muster auf dem Tisch".encode()}),
         ("bad_tiny", {"jpg": fashion(48, (40, 40)), "txt": b"a small photo of a light bag"}),
         ("bad_wide", {"jpg": fashion(49, (400, 100)), "txt": b"a wide photo of a dark trouser"})],
    ]
    for shard, bad in enumerate(planted):
        samples = [good(shard * 10 + i) for i in range(8)]
        write_shard(root / f"in-{shard:03d}.tar", samples[:4] + bad + samples[4:])
    cut = write_shard(root / "in-003.tar", [good(30 + i) for i in range(6)])
    with tarfile.open(cut) as tar:
        fifth = tar.getmember("fm0034.jpg")
    cut.write_bytes(cut.read_bytes()[: fifth.offset_data + fifth.size // 2])
    return str(root / "in-{000..003}.tar")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return planted_shards(tmp_path_factory.mktemp("recipes") / "in")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "recipe_test_steps.py").write_text(PLUGIN)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def write_recipe(path: Path, steps: str, shard_size: int = 10, imports=()) -> Path:
    path.write_text(f"input: null\noutput: null\nimports: {list(imports)}\nsteps:{steps}\n"
                    f"sink: {{shard_size: {shard_size}}}\n")
    return path


def run(capsys, recipe: Path, *args: str) -> tuple[int, str, str]:
    code = main(["recipe", "run", str(recipe), *args])
    out, err = capsys.readouterr()
    return code, out, err


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1].split("\r")[-1]  # after the progress bar's carriage returns


def decisions(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob("decisions/stage*/*.jsonl")) for line in path.open()]


def output_samples(out: Path) -> list[dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("[0-9]*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return list(samples.values())


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def cleaned(shards, tmp_path_factory):
    """The planted shards through every built-in step, with two worker processes."""
    tmp = tmp_path_factory.mktemp("cleaned")
    recipe = write_recipe(tmp / "clean.yaml", CLEAN_STEPS)
    out = tmp / "out"
    code = main(["recipe", "run", str(recipe), f"input={shards}", f"output={out}", "workers=2"])
    assert code == 0
    return recipe, out


def test_every_sample_is_kept_or_dropped_once_with_its_reason(cleaned):
    _, out = cleaned
    records = decisions(out)
    first = [json.loads(line) for path in sorted(out.glob("decisions/stage0/*.jsonl")) for line in path.open()]
    assert {r["key"]: (r["step"], r["reason"]) for r in records if not r["kept"]} == PLANTED
    kept = output_samples(out)
    assert len(first) == 3 * 12 + 4 + 1 == len(kept) + len(PLANTED)  # input = kept + dropped
    assert sorted(json.loads(s["json"])["source_index"] for s in kept) == sorted([*range(0, 8), *range(10, 18),
                                                                                  *range(20, 28), *range(30, 34)])
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 10, "00001.tar": 10, "00002.tar": 8}


def test_kept_samples_carry_their_scores_and_original_fields(cleaned):
    _, out = cleaned
    for sample in output_samples(out):
        document, caption = json.loads(sample["json"]), sample["txt"].decode()
        scores = document["scores"]
        assert scores["caption_length"] == {"chars": len(caption), "words": len(caption.split())}
        assert scores["image_size"]["min_side"] == 96 and scores["image_size"]["aspect"] == 1.0
        assert 0.5 < scores["language"]["confidence"] <= 1.0
        assert scores["read"] == {"words": len(caption.split()), "min_side": 96}
        assert document["source_index"] >= 0  # the input's own fields stay
        assert FASHION.captions[document["source_index"]] == caption  # and the original caption
    records = {r["key"]: r for r in decisions(out) if r["key"] and not r["kept"]}
    assert records["bad_tiny"]["scores"]["image_size"]["min_side"] == 40  # drops keep their scores too
    assert records["bad_wide"]["scores"]["image_size"]["aspect"] == 4.0


def test_output_reads_back_through_vlp_data_with_the_synthetic_captions(cleaned):
    _, out = cleaned
    (source,), _ = open_sources([{"path": str(out / "{00000..00002}.tar"), "caption_fields": ["txt",
                                                                                              "json.rewrite_rules"]}])
    raws = list(iter_in_order(source))
    assert len(raws) == 28
    rewritten = 0
    for raw in raws:
        captions = caption_candidates(raw.captions, 4096)
        original = [text for field, text in captions if field == "txt"]
        synthetic = [text for field, text in captions if field == "json.rewrite_rules"]
        assert len(original) == 1 and len(synthetic) <= 2 and original[0] not in synthetic
        rewritten += bool(synthetic)
    assert rewritten == 28  # every Fashion-MNIST caption says "photo", which the synonym table rewrites
    document = json.loads(output_samples(out)[0]["json"])
    assert document["caption_sources"] == {"rewrite_rules": "rules:synonyms+reorder"}
    assert document["scores"]["rewrite_rules"] == {"rewrites": len(document["rewrite_rules"])}


def test_report_numbers_are_the_decisions_and_its_figures_exist(cleaned):
    _, out = cleaned
    report = json.loads((out / "report.json").read_text())
    records = decisions(out)
    assert report["samples"] == {"input": 41, "kept": 28, "dropped": 13}
    by_step = {row["name"]: row for row in report["steps"]}
    assert list(by_step) == ["read", "caption_length", "text_patterns", "unique_words", "language", "image_size",
                             "exact_dedup", "rewrite_rules"]
    for (step, reason), count in Counter(PLANTED.values()).items():
        assert by_step[step]["dropped"][reason] == count
    assert Counter({(s, r): n for s, row in by_step.items() for r, n in row["dropped"].items()}) == Counter(
        (r["step"], r["reason"]) for r in records if not r["kept"])
    assert all(row["in"] - sum(row["dropped"].values()) == row["out"] for row in report["steps"])
    assert by_step["read"]["in"] == 41 and by_step["rewrite_rules"]["out"] == 28
    assert by_step["image_size"]["scores"]["min_side"]["thresholds"] == [64]
    assert by_step["exact_dedup"]["summary"] == {"unique_images": 28, "duplicated_images": 1, "largest_group": 3}
    sizes = report["distributions"]["image_min_side"]
    assert sizes["before"]["min"] == 40 and sizes["after"]["min"] == 96
    for path in [*report["figures"]["scores"].values(), report["figures"]["caption_words"],
                 report["figures"]["image_min_side"], report["figures"]["kept"], report["figures"]["dropped"]]:
        with Image.open(out / path) as picture:
            assert picture.format == "PNG" and picture.width > 300
    markdown = (out / "report.md").read_text()
    assert "Kept **28** of **41** samples" in markdown and "| language | language | sample | 33 | 1 | 32 |" in markdown
    assert "language_de 1" in markdown and "![dropped](report/dropped.png)" in markdown


def test_a_finished_run_is_left_alone_and_a_different_one_is_refused(cleaned, shards, capsys):
    recipe, out = cleaned
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.rglob("*") if path.is_file()}
    code, stdout, _ = run(capsys, recipe, f"input={shards}", f"output={out}", "workers=2")
    assert code == 0 and "kept 28 of 41 samples in 3 shards" in stdout
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.rglob("*") if path.is_file()} == before
    assert not (out / ".work").exists()

    code, _, err = run(capsys, recipe, f"input={shards}", f"output={out}", "steps.0.min_words=3")
    assert code == 1 and last_line(err) == (
        f"vlp recipe: error: {out} holds a run of a different recipe (steps.0.min_words: 2 -> 3); pass --overwrite "
        "to replace it, or choose another output")
    code, _, err = run(capsys, recipe, f"input={shards.replace('003', '002')}", f"output={out}")
    assert code == 1 and "a different recipe (input: '" in last_line(err)
    stranger = out.parent / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    code, _, err = run(capsys, recipe, f"input={shards}", f"output={stranger}", "--overwrite")
    assert code == 1 and "holds no recipe.yaml" in last_line(err) and (stranger / "notes.txt").exists()


def test_overwrite_replaces_an_earlier_run(shards, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "short.yaml", "\n  - caption_length: {min_words: 2}\n", shard_size=100)
    out = tmp_path / "out"
    assert run(capsys, recipe, f"input={shards}", f"output={out}", "workers=0")[0] == 0
    code, stdout, _ = run(capsys, recipe, "--overwrite", f"input={shards}", f"output={out}",  # flags anywhere
                          "steps.caption_length.min_words=8", "workers=0")
    report, kept = json.loads((out / "report.json").read_text()), output_samples(out)
    dropped = report["steps"][1]["dropped"]["too_few_words"]
    assert code == 0 and dropped > 1 and len(kept) + dropped + 4 == 41 and f"kept {len(kept)} of 41" in stdout
    assert all(len(sample["txt"].split()) >= 8 for sample in kept)
    assert yaml.safe_load((out / "recipe.yaml").read_text())["steps"][0]["min_words"] == 8
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar"]


def test_batch_and_global_steps_follow_the_protocol(shards, plugin, tmp_path, capsys):
    steps = """
  - {type: test_where, name: where}
  - test_recaption
  - {type: test_where, name: after_batch}
  - test_concepts
  - {type: test_recaption, name: second_recaption, batch_size: 3}
"""
    recipe = write_recipe(tmp_path / "protocol.yaml", steps, imports=["recipe_test_steps"])
    out = tmp_path / "out"
    code, _, err = run(capsys, recipe, f"input={shards}", f"output={out}", "workers=2")
    assert code == 0, err
    records = [r for r in decisions(out) if r["kept"] or r["step"] != "read"]
    for name in ("where", "after_batch"):  # sample steps run in the workers, a batch step's followers too
        assert {r["scores"][name]["in_main"] for r in records if name in r["scores"]} == {0.0}
    assert sum("after_batch" in r["scores"] for r in records) == sum("test_recaption" in r["scores"] for r in records)
    batches = [r["scores"]["test_recaption"] for r in records if "test_recaption" in r["scores"]]
    assert {b["in_main"] for b in batches} == {1.0} and max(b["batch"] for b in batches) == 4
    assert max(r["scores"]["second_recaption"]["batch"] for r in records if "second_recaption" in r["scores"]) == 3
    report = json.loads((out / "report.json").read_text())
    concepts = next(row for row in report["steps"] if row["name"] == "test_concepts")
    last_words = Counter(s["txt"].decode().rstrip(".").split()[-1] for s in output_samples(out))
    assert concepts["summary"] == dict(last_words) and concepts["out"] == 37 == sum(last_words.values())
    assert '"Tisch": 1' in (out / "report.md").read_text()
    (source,), _ = open_sources([{"path": str(out / "{00000..00003}.tar"),
                                  "caption_fields": ["txt", "json.test_recaption", "json.second_recaption"]}])
    for raw in iter_in_order(source):
        assert [f for f, _ in caption_candidates(raw.captions, 4096)] == ["txt", "json.test_recaption",
                                                                          "json.second_recaption"]


@pytest.mark.parametrize("steps, overrides, expected", [
    ("\n  - captionlength: {min_words: 2}\n", [],
     "step 0: unknown recipe step 'captionlength' (did you mean 'caption_length'?); valid: caption_length, "),
    ("\n  - caption_length: {}\n  - image_size: {min_sid: 3}\n", [],
     "step 1 (image_size): unknown config key 'min_sid' (did you mean 'min_side'?); valid keys: min_side, "),
    ("\n  - image_size: {min_side: big}\n", [], "step 0 (image_size): config key 'min_side' expects int, got 'big'"),
    ("\n  - image_size: {max_aspect: 0.5}\n", [], "step 0 (image_size): config key 'max_aspect' must be at least 1"),
    ("\n  - language: {keep: [english]}\n", [], "step 0 (language): config key 'keep' names unknown language(s) "),
    ("\n  - text_patterns: {boilerplate: ['(unclosed']}\n", [],
     "step 0 (text_patterns): config key 'boilerplate[0]' is not a valid regular expression"),
    ("\n  - caption_length\n  - caption_length\n", [], "step 1 (caption_length): another step is already named"),
    ("\n  - caption_length\n", ["steps.4.min_words=3"], "override 'steps.4.min_words=3': no step '4'"),
    ("\n  - caption_length\n", ["sink.shard_size=0"], "'sink.shard_size' must be at least 1, got 0"),
    ("\n  - caption_length\n", ["engine=spark"], "unknown recipe engine 'spark'; valid: local"),
    ("\n  - caption_length\n", ["imports=[no_such_module_here]"], "imports: cannot import 'no_such_module_here'"),
    ("\n  - caption_length\n", ["defaults.modle=runs/x"],
     "'defaults.modle': no step of the recipe has an option 'modle' left unset"),
])
def test_a_bad_recipe_is_one_line_naming_the_file_step_and_key(tmp_path, capsys, shards, steps, overrides,
                                                                 expected):
    recipe = write_recipe(tmp_path / "bad.yaml", steps)
    code, _, err = run(capsys, recipe, f"input={shards}", f"output={tmp_path / 'out'}", *overrides)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"vlp recipe: error: recipe {recipe}: {expected}")
    assert not (tmp_path / "out").exists()


def test_defaults_fill_every_step_that_leaves_the_option_unset(tmp_path):
    shared, own = tmp_path / "shared_model", tmp_path / "own_model"
    shared.mkdir(), own.mkdir()
    recipe = write_recipe(tmp_path / "r.yaml", "\n  - embedding_dedup: {}\n  - clip_score: {model: null}\n"
                                               f"  - cluster_balance: {{model: {own}, clusters: 2, per_cluster: 5}}\n")
    loaded = load_recipe(recipe, ["input=x", "output=y", f"defaults.model={shared}", "defaults.batch_size=32"])
    assert [step.config.model for step in loaded.steps] == [str(shared), str(shared), str(own)]
    assert [step.config.batch_size for step in loaded.steps] == [32, 32, 32]
    assert [options["model"] for options in loaded.resolved["steps"]] == [str(shared), str(shared), str(own)]
    each = [f"steps.{name}.{key}={value}" for name in ("embedding_dedup", "clip_score", "cluster_balance")
            for key, value in (("model", shared), ("batch_size", 32)) if (name, key) != ("cluster_balance", "model")]
    assert load_recipe(recipe, ["input=x", "output=y", *each]).fingerprint == loaded.fingerprint  # the same run


def test_missing_inputs_and_settings_are_named(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", "\n  - caption_length\n")
    code, _, err = run(capsys, recipe, f"output={tmp_path / 'out'}")
    assert code == 2 and "'input' is not set; give it on the command line" in err
    code, _, err = run(capsys, recipe, f"input={tmp_path}/none-{{0..3}}.tar", f"output={tmp_path / 'out'}")
    pattern = f"{tmp_path}/none-{{0..3}}.tar"
    assert code == 2 and err == f"vlp recipe: error: recipe {recipe}: input: no tar shards match {pattern}\n"
    code, _, err = run(capsys, tmp_path / "absent.yaml")
    assert code == 2 and err == f"vlp recipe: error: recipe file not found: {tmp_path / 'absent.yaml'}\n"
    (tmp_path / "broken.yaml").write_text("steps: [a, b\n")
    code, _, err = run(capsys, tmp_path / "broken.yaml")
    assert code == 2 and err.startswith(f"vlp recipe: error: recipe {tmp_path / 'broken.yaml'}: not valid YAML")


def test_shipped_recipes_load(shards, tmp_path):
    from vlp.recipes import load_recipe

    basic = load_recipe(REPO / "data_recipes/datacomp_basic.yaml", [f"input={shards}", "output=x"])
    assert [s.name for s in basic.steps] == ["caption_length", "language", "image_size"]
    assert basic.resolved["steps"][2] == {"type": "image_size", "name": "image_size", "min_side": 200,
                                          "max_aspect": 3.0, "min_bytes": None, "max_bytes": None}
    dedup = load_recipe(REPO / "data_recipes/dedup.yaml", [f"input={shards}", "output=x"])
    assert dedup.steps[0].name == "exact_dedup" and {s.kind for s in dedup.steps} == {"global"}


def live_group_members(group: int) -> list[int]:
    """Processes of a process group that are still running (not zombies waiting to be reaped)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited while we looked
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def start_run(argv: list[str]) -> int:
    """``vlp recipe run ARGV`` in a child process of its own group. The child is forked from this one, whose imports
    are warm: a fresh interpreter spends 5 to 15 seconds importing torch (through vlp.data) on a 2-core machine."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()
            # tqdm's default lock is a semaphore shared across fork: a child killed while drawing its progress bar
            # would leave it taken for every later run forked from here. A lock of its own for each child.
            tqdm.set_lock(threading.RLock())
            code = main(["recipe", "run", *argv])
        finally:
            os._exit(code)
    return pid


def kill_when(argv: list[str], condition, what: str) -> None:
    """Start a run and SIGKILL it as soon as ``condition`` holds; its worker processes must die with it rather than
    wait for work forever."""
    pid, deadline = start_run(argv), time.monotonic() + 60
    try:
        while not condition():
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), f"the run ended before {what}"
            assert time.monotonic() < deadline, f"never saw {what}"
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        deadline = time.monotonic() + 10
        while live_group_members(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_group_members(pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_a_run_killed_three_times_and_rerun_ends_identical_to_an_uninterrupted_one(shards, plugin, tmp_path, capsys):
    steps = CLEAN_STEPS.replace("  - exact_dedup: {}\n",
                                "  - {type: test_sleep, seconds: 0.02}\n  - exact_dedup: {}\n"
                                "  - {type: test_sleep, name: sleep_again, seconds: 0.02}\n")
    recipe = write_recipe(tmp_path / "slow.yaml", steps, shard_size=7, imports=["recipe_test_steps"])
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert run(capsys, recipe, f"input={shards}", f"output={reference}", "workers=0")[0] == 0
    argv = [str(recipe), f"input={shards}", f"output={out}", "workers=2"]
    stage0 = out / "decisions" / "stage0"
    kill_when(argv, lambda: stage0.is_dir() and any(stage0.glob("*.jsonl")), "a first committed shard")
    assert 0 < len(list(stage0.glob("*.jsonl"))) < 4 and not (out / "report.json").exists()
    committed = {path: path.stat().st_mtime_ns for path in stage0.glob("*.jsonl")}
    kill_when(argv, lambda: (out / ".work" / "stage0.decided.pkl").is_file(), "the global decision")
    assert not (out / "report.json").exists() and len(list(stage0.glob("*.jsonl"))) == 4
    kill_when(argv, lambda: (out / "00000.tar").is_file(), "a first output shard")  # re-sharding or the report
    assert not (out / "report.json").exists()
    code, _, err = run(capsys, recipe, *argv[1:])
    assert code == 0, err
    finished, expected = snapshot(out), snapshot(reference)
    assert finished.pop("recipe.yaml") != expected.pop("recipe.yaml")  # it records workers and output, and only it
    assert sorted(finished) == sorted(expected) and any(name.endswith(".tar") for name in finished)
    assert [name for name in finished if finished[name] != expected[name]] == []
    assert not [path for path in out.rglob("*") if path.name.endswith(".tmp")]
    assert {path: path.stat().st_mtime_ns for path in committed} == committed  # committed work was not redone
