"""``report.json`` and ``report.md``: what each step removed and why, score and size distributions, example grids.
Everything is computed from the decisions files, shard by shard, so the numbers are the decisions and memory does
not grow with the data. ``report.json`` is written last: it marks the run complete."""
from __future__ import annotations

import hashlib
import heapq
import json
import pickle
from array import array
from collections import Counter, defaultdict

import numpy as np
from PIL import ImageOps

from vlp.data.decode import BadSample
from vlp.data.inspect import distribution
from vlp.recipes import plots
from vlp.recipes.layout import Layout
from vlp.recipes.recipe import Recipe
from vlp.recipes.shards import read_samples
from vlp.recipes.stages import Stage
from vlp.utils import atomic_write_text

KEPT_EXAMPLES = 12
DROPPED_PER_REASON = 3
DROPPED_EXAMPLES = 24
SIZES = {"caption_words": ("words", "caption length (words)"), "image_min_side": ("min_side", "shorter side (px)")}


def rank(shard: int, key: str) -> str:
    """A fixed pseudo-random order for picking examples spread over the data."""
    return hashlib.sha1(f"{shard}/{key}".encode()).hexdigest()


class Tally:
    """Counts, scores and example picks, added one input shard (all its stages' decisions) at a time."""

    def __init__(self):
        self.input = self.kept = 0
        self.reasons: dict[str, Counter] = defaultdict(Counter)
        self.scores: dict[str, dict[str, array]] = defaultdict(lambda: defaultdict(lambda: array("d")))
        self.sizes = {name: {"before": array("d"), "after": array("d")} for name in SIZES}
        self.kept_examples: list[tuple[str, int, str]] = []
        self.dropped_examples: dict[tuple[str, str], list] = defaultdict(list)

    def add_shard(self, shard: int, stages: list[list[dict]]) -> None:
        kept = {record["key"] for record in stages[-1] if record["kept"]}
        self.input += len(stages[0])
        self.kept += len(kept)
        for records in stages:
            for record in records:
                for step, scores in record["scores"].items():
                    for name, value in scores.items():
                        self.scores[step][name].append(value)
                if not record["kept"]:
                    self.reasons[record["step"]][record["reason"]] += 1
                    self.offer_dropped(shard, record)
        for record in stages[0]:
            read = record["scores"].get("read", {})
            for name, (score, _) in SIZES.items():
                if score in read:
                    self.sizes[name]["before"].append(read[score])
                    if record["key"] in kept:
                        self.sizes[name]["after"].append(read[score])
        picks = [(rank(shard, key), shard, key) for key in kept]
        self.kept_examples = heapq.nsmallest(KEPT_EXAMPLES, self.kept_examples + picks)

    def offer_dropped(self, shard: int, record: dict) -> None:
        if record["key"] is not None:  # a lost shard remainder has nothing to show
            group = (record["step"], record["reason"])
            picks = self.dropped_examples[group] + [(rank(shard, record["key"]), shard, record["key"])]
            self.dropped_examples[group] = heapq.nsmallest(DROPPED_PER_REASON, picks)


def read_decisions(layout: Layout, stages: list[Stage], shard: int) -> list[list[dict]]:
    found = []
    for stage in stages:
        with layout.decisions(stage.index, shard).open() as lines:
            found.append([json.loads(line) for line in lines])
    return found


def step_rows(recipe: Recipe, stages: list[Stage], tally: Tally, layout: Layout) -> list[dict]:
    """One row per step in the order steps judge samples: samples in, dropped by reason, out, score statistics."""
    kinds = {step.name: step for stage in stages for step in stage.all_steps}
    summaries = {stage.ends_with.name: pickle.loads(layout.global_result(stage.index).read_bytes())["summary"]
                 for stage in stages if stage.ends_with is not None}
    rows, alive = [], tally.input
    for entry in [{"name": "read", "type": "read"}, *recipe.resolved["steps"]]:
        name, step = entry["name"], kinds[entry["name"]]
        dropped = dict(sorted(tally.reasons[name].items()))
        row = {"name": name, "type": entry["type"], "kind": step.kind, "in": alive, "dropped": dropped,
               "out": alive - sum(dropped.values()),
               "scores": {score: {**distribution(values), "thresholds": step.thresholds().get(score, [])}
                          for score, values in tally.scores[name].items() if len(values)}}
        if summaries.get(name) is not None:
            row["summary"] = summaries[name]
        rows.append(row)
        alive = row["out"]
    return rows


def load_images(wanted: dict[int, set[str]], paths: list) -> dict[tuple[int, str], object]:
    """(thumbnail, sample) of the wanted (shard, key) samples, read from ``paths`` by shard; the thumbnail is None
    where the image does not decode."""
    images = {}
    for shard, keys in sorted(wanted.items()):
        for sample in read_samples(paths[shard]):
            if sample.key in keys:
                try:
                    images[(shard, sample.key)] = (ImageOps.contain(sample.image, (128, 128)), sample)
                except BadSample:
                    images[(shard, sample.key)] = (None, sample)
    return images


def caption_of(sample) -> str:
    try:
        return sample.caption
    except (KeyError, UnicodeDecodeError):
        return "(no usable caption)"


def example_figures(tally: Tally, layout: Layout, stages: list[Stage], shards: list[str]) -> None:
    kept = [(shard, key) for _, shard, key in tally.kept_examples]
    groups = sorted(tally.dropped_examples.items(), key=lambda item: -tally.reasons[item[0][0]][item[0][1]])
    dropped = [(group, shard, key) for group, picks in groups for _, shard, key in picks][:DROPPED_EXAMPLES]
    last = [layout.work_shard(stages[-1].stored_in, shard) for shard in range(len(shards))]
    shown = load_images(group_by_shard(kept), last)
    plots.example_grid([(shown[pick][0], caption_of(shown[pick][1])) for pick in kept if pick in shown],
                       "kept samples", layout.figures / "kept.png")
    shown = load_images(group_by_shard([(shard, key) for _, shard, key in dropped]), shards)
    plots.example_grid([(shown[(shard, key)][0], f"{step}: {reason}\n{caption_of(shown[(shard, key)][1])}")
                        for (step, reason), shard, key in dropped if (shard, key) in shown],
                       "dropped samples (step: reason)", layout.figures / "dropped.png")


def group_by_shard(picks: list[tuple[int, str]]) -> dict[int, set[str]]:
    wanted: dict[int, set[str]] = defaultdict(set)
    for shard, key in picks:
        wanted[shard].add(key)
    return wanted


def figures(rows: list[dict], tally: Tally, layout: Layout) -> dict:
    """Draw every PNG; returns their paths relative to the output directory."""
    drawn = {"scores": {}}
    for row in rows:
        scores = {name: np.asarray(tally.scores[row["name"]][name]) for name in row["scores"]}
        if scores:
            path = layout.figures / f"scores_{row['name']}.png"
            plots.score_histograms(scores, {n: s["thresholds"] for n, s in row["scores"].items()},
                                   row["name"] if row["name"] == row["type"] else f"{row['name']} ({row['type']})",
                                   path)
            drawn["scores"][row["name"]] = str(path.relative_to(layout.root))
    for name, (_, label) in SIZES.items():
        path = layout.figures / f"{name}.png"
        plots.before_after(np.asarray(tally.sizes[name]["before"]), np.asarray(tally.sizes[name]["after"]), label,
                           path)
        drawn[name] = str(path.relative_to(layout.root))
    drawn.update(kept="report/kept.png", dropped="report/dropped.png")
    return drawn


def sizes_section(tally: Tally) -> dict:
    return {name: {when: distribution(values) if len(values) else None for when, values in split.items()}
            for name, split in tally.sizes.items()}


def write_report(recipe: Recipe, stages: list[Stage], layout: Layout, shards: list[str], sizes: dict) -> dict:
    tally = Tally()
    for shard in range(len(shards)):
        tally.add_shard(shard, read_decisions(layout, stages, shard))
    rows = step_rows(recipe, stages, tally, layout)
    dropped = sum(sum(row["dropped"].values()) for row in rows)
    report = {"recipe": str(recipe.path), "input_shards": len(shards),
              "output_shards": len(sizes), "samples": {"input": tally.input, "kept": tally.kept, "dropped": dropped},
              "steps": rows, "distributions": sizes_section(tally), "figures": figures(rows, tally, layout)}
    example_figures(tally, layout, stages, shards)
    atomic_write_text(layout.report_md, markdown(report))
    atomic_write_text(layout.report_json, json.dumps(report, indent=1) + "\n")
    return report


def load_report(layout: Layout) -> dict:
    return json.loads(layout.report_json.read_text())


def markdown(report: dict) -> str:
    samples = report["samples"]
    share = samples["kept"] / samples["input"] if samples["input"] else 0.0
    lines = [f"# Recipe report: {report['recipe']}", "",
             f"Kept **{samples['kept']}** of **{samples['input']}** samples ({share:.1%}) from "
             f"{report['input_shards']} input shards, written as {report['output_shards']} shards. Every sample is "
             "kept, or dropped by exactly one step: input = kept + dropped.", "",
             "| step | type | kind | in | dropped | out | reasons |", "|---|---|---|---:|---:|---:|---|"]
    for row in report["steps"]:
        reasons = ", ".join(f"{reason} {count}" for reason, count in row["dropped"].items()) or "-"
        lines.append(f"| {row['name']} | {row['type']} | {row['kind']} | {row['in']} | "
                     f"{sum(row['dropped'].values())} | {row['out']} | {reasons} |")
    lines += ["", "## Scores", "", "Every score is in the kept samples' `key.json` under `scores.<step>`; dashed red "
              "lines are the thresholds.", ""]
    lines += [f"![{name}]({path})" for name, path in report["figures"]["scores"].items()]
    lines += ["", "## Caption length and image size, before and after", "",
              "| | | min | median | p95 | max |", "|---|---|---:|---:|---:|---:|"]
    for name, split in report["distributions"].items():
        for when, stats in split.items():
            cells = [f"{stats[k]:.4g}" for k in ("min", "median", "p95", "max")] if stats else ["-"] * 4
            lines.append(f"| {name} | {when} | {' | '.join(cells)} |")
    lines += ["", *(f"![{name}]({report['figures'][name]})" for name in SIZES), "", "## Examples", "",
              f"![kept]({report['figures']['kept']})", "", f"![dropped]({report['figures']['dropped']})", ""]
    for row in (row for row in report["steps"] if "summary" in row):
        lines += [f"## {row['name']} summary", "", "```json", json.dumps(row["summary"], indent=1), "```", ""]
    return "\n".join(lines)
