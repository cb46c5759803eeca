"""The output directory of a recipe run, and what its files mean for a re-run.

```
OUT/recipe.yaml              the resolved recipe (every option, defaults filled in); re-runnable
OUT/inputs.json              the input shards in order: decision files are numbered by them
OUT/decisions/stageK/NNNNN.jsonl   one line per sample that entered stage K from input shard NNNNN
OUT/.work/                   intermediate shards and signatures; removed once the run is complete
OUT/00000.tar ... sizes.json the cleaned shards
OUT/report.json, report.md, report/*.png   written last: their presence means the run is complete
```

Every file is written whole under a temporary name and renamed, and each unit of work is committed by its last
file (a stage's shard by its decisions file), so a run killed at any point and started again redoes only what it
had not committed, and ends with the same bytes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from vlp.utils import atomic_write_text

OUTPUT_SHARD = "{:05d}.tar"


def first_difference(old, new, where: str = "") -> str | None:
    """The first key whose value differs between two resolved recipes, e.g. ``steps.0.min_words: 2 -> 3``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in dict.fromkeys([*old, *new]):
            found = first_difference(old.get(key), new.get(key), f"{where}{key}.")
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return next(filter(None, (first_difference(a, b, f"{where}{i}.") for i, (a, b) in enumerate(zip(old, new)))),
                    None)
    return None if old == new else f"{where.rstrip('.')}: {old!r} -> {new!r}"


class Layout:
    def __init__(self, output: str | Path):
        self.root = Path(output)
        self.recipe = self.root / "recipe.yaml"
        self.inputs = self.root / "inputs.json"
        self.work = self.root / ".work"
        self.report_json = self.root / "report.json"
        self.report_md = self.root / "report.md"
        self.figures = self.root / "report"
        self.sizes = self.root / "sizes.json"

    def decisions(self, stage: int, shard: int) -> Path:
        return self.root / "decisions" / f"stage{stage}" / f"{shard:05d}.jsonl"

    def work_shard(self, stage: int, shard: int) -> Path:
        return self.work / f"stage{stage}" / f"{shard:05d}.tar"

    def signatures(self, stage: int, shard: int) -> Path:
        return self.work / f"stage{stage}" / f"{shard:05d}.signatures.pkl"

    def global_result(self, stage: int) -> Path:
        return self.work / f"stage{stage}.decided.pkl"

    def output_shard(self, index: int) -> Path:
        return self.root / OUTPUT_SHARD.format(index)

    @property
    def complete(self) -> bool:
        return self.report_json.is_file()

    def claim(self, resolved: dict, fingerprint: dict, inputs: list[str], overwrite: bool) -> None:
        """Make ``root`` this run's: new, or an earlier run of the same recipe on the same inputs (resumed), or,
        with ``overwrite``, an earlier run of another (whose files are removed). Never a directory of other files."""
        if self.root.exists() and any(self.root.iterdir()):
            if not self.recipe.is_file():
                raise FileExistsError(f"{self.root} is not empty and holds no recipe.yaml: it is not the output of "
                                      "a recipe run; choose a new output directory")
            earlier = {key: value for key, value in yaml.safe_load(self.recipe.read_text()).items()
                       if key in fingerprint}
            earlier_inputs = json.loads(self.inputs.read_text()) if self.inputs.is_file() else inputs
            change = first_difference(earlier, fingerprint) or first_difference(
                {"input shards": earlier_inputs}, {"input shards": inputs})
            if change and not overwrite:
                raise FileExistsError(f"{self.root} holds a run of a different recipe ({change}); pass "
                                      "--overwrite to replace it, or choose another output")
            if overwrite:
                self.remove_run()
        for path, text in ((self.recipe, yaml.safe_dump(resolved, sort_keys=False)),
                           (self.inputs, json.dumps(inputs, indent=1) + "\n")):
            if not path.is_file() or path.read_text() != text:  # a resumed or finished run's files stay untouched
                atomic_write_text(path, text)

    def remove_run(self) -> None:
        """Delete an earlier run's files, and only those."""
        for path in [self.recipe, self.inputs, self.report_json, self.report_md, self.sizes,
                     *self.root.glob("[0-9][0-9][0-9][0-9][0-9].tar")]:
            path.unlink(missing_ok=True)
        for folder in (self.work, self.root / "decisions", self.figures):
            shutil.rmtree(folder, ignore_errors=True)
        self.remove_temporaries()

    def remove_temporaries(self) -> None:
        """Temporary files a killed run left behind; the work they held is redone."""
        for pattern in (".*.tmp", "decisions/*/.*.tmp", ".work/*/.*.tmp", ".work/.*.tmp", "report/.*.tmp"):
            for path in self.root.glob(pattern):
                path.unlink(missing_ok=True)
