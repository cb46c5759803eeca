"""A recipe file: where the shards come from, the steps, where the cleaned shards go. Loaded from YAML with
``key=value`` overrides, every step built and checked before any data is read.

Steps are written in a short form, ``- caption_length: {min_words: 2}`` (or ``- exact_dedup``), or an explicit one,
``- {type: clip_score, name: score_original, min_score: 0.2}``, which lets one type appear twice under different
names. Overrides address a step by index or by name: ``steps.0.min_words=3``, ``steps.language.keep=[en,de]``.
``defaults`` gives an option to every step that has it and leaves it unset: ``defaults.model=runs/vit_b32`` sets the
model of every model step at once.
"""
from __future__ import annotations

import dataclasses
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlp.config import from_dict, parse_override
from vlp.errors import ConfigError
from vlp.recipes.steps import STEPS, Step

STEP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
RESERVED_NAMES = ("read",)  # the engine's own check of every input sample
# how a run goes, not what it produces (``defaults`` is in the steps' own options once they are resolved)
RUN_SETTINGS = ("output", "engine", "workers", "ray", "defaults")
AS_TYPED = (["input"], ["output"], ["ray", "address"])  # override values taken as typed, not read as YAML


@dataclass
class SinkConfig:
    shard_size: int = 10000  # samples per output shard (the last one holds the rest)


@dataclass
class RayConfig:
    """How the ray engine runs (``engine: ray``); docs/recipes.md, Engines."""

    address: str | None = None  # None: $RAY_ADDRESS, else a cluster running on this machine, else a new local one
    actors: int = 1  # processes for a stage with model steps; each loads the models once, for all its shards
    gpus_per_actor: float = 0.0  # GPUs each of those reserves (1, or 0.5 to share one); 0: CPU only
    cpus_per_actor: int = 1  # CPUs each of those reserves: Ray gives torch that many threads


@dataclass
class RecipeConfig:
    input: str | None = None  # tar shards: /data/{00000..00099}.tar, globs, several joined with '::'
    output: str | None = None  # a new directory, or one holding an earlier run of the same recipe
    steps: list = field(default_factory=list)
    sink: SinkConfig = field(default_factory=SinkConfig)
    engine: str = "local"  # a key of vlp.recipes.engine.ENGINES: local or ray
    workers: int | None = None  # local engine: processes for sample steps; None: min(cores, 4); 0: main process
    ray: RayConfig = field(default_factory=RayConfig)
    imports: list[str] = field(default_factory=list)  # modules to import first: they can register more steps
    # options for every step that has them and leaves them unset, e.g. {model: runs/vit_b32} for all model steps
    defaults: dict = field(default_factory=dict)


@dataclass
class Recipe:
    path: Path
    config: RecipeConfig
    steps: list[Step]
    resolved: dict  # every setting and step option, defaults filled in: what recipe.yaml in the output holds

    @property
    def fingerprint(self) -> dict:
        """What decides the output: two runs with equal fingerprints write identical bytes."""
        return {key: value for key, value in self.resolved.items() if key not in RUN_SETTINGS}


def explicit_step(item: Any, index: int) -> dict:
    """A step entry in the explicit form ``{type, name, **options}``."""
    if isinstance(item, str):
        return {"type": item, "name": item}
    if isinstance(item, dict) and "type" in item:
        return {"name": item["type"], **item}
    if isinstance(item, dict) and len(item) == 1:
        (kind, options), = item.items()
        if options is None or isinstance(options, dict):
            return {"type": kind, "name": kind, **(options or {})}
    raise ConfigError(f"step {index} must be a step name, '{{name: {{options}}}}' or '{{type: name, ...}}', "
                      f"got {item!r}")


def _step_node(steps: list[dict], part: str, text: str) -> dict:
    """The step an override's ``steps.<part>`` names: an index or a step name."""
    if part.isdigit() and int(part) < len(steps):
        return steps[int(part)]
    named = [step for step in steps if step.get("name") == part]
    if named:
        return named[0]
    raise ConfigError(f"override '{text}': no step '{part}' (the recipe has steps 0-{len(steps) - 1}: "
                      f"{', '.join(str(s.get('name')) for s in steps)})")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        if path in AS_TYPED:  # "{000..009}.tar" is no YAML mapping, "2024" no number
            value = text.split("=", 1)[1]
        node = data
        for part in path[:-1]:
            if isinstance(node, list):
                node = _step_node(node, part, text)
                continue
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        if isinstance(node, list):
            raise ConfigError(f"override '{text}': set a step's option, e.g. steps.0.min_words=3")
        node[path[-1]] = value
    return data


def build_step(entry: dict, index: int, names: set[str], defaults: dict, used: set[str]) -> tuple[Step, dict]:
    """The step of an explicit entry, and its resolved options, with ``defaults`` for the options it leaves unset
    (recorded in ``used``); errors name the step by index and name."""
    entry = dict(entry)
    kind, name = entry.pop("type"), entry.pop("name")
    where = f"step {index} ({name})"
    if not isinstance(name, str) or not STEP_NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise ConfigError(f"{where}: a step name is a letter then letters, digits or '_', and not "
                          f"{', '.join(RESERVED_NAMES)}")
    if name in names:
        raise ConfigError(f"{where}: another step is already named '{name}'; give one of them a 'name:'")
    try:
        cls = STEPS.get(kind)
    except KeyError as err:
        raise ConfigError(f"step {index}: {err.args[0]}") from None
    for option in (spec.name for spec in dataclasses.fields(cls.Config)):
        if option in defaults and entry.get(option) is None:
            entry[option] = defaults[option]
            used.add(option)
    try:
        config = from_dict(cls.Config, entry)
        step = cls(name, config)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return step, {"type": kind, "name": name, **dataclasses.asdict(config)}


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"a recipe is a mapping with input, output, steps and sink; got {type(data).__name__}")
    return data


def import_modules(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"imports: cannot import '{name}': {err}") from None


def parse_recipe(data: dict, overrides: list[str]) -> tuple[RecipeConfig, list[Step], dict]:
    steps = data.get("steps") or []
    if not isinstance(steps, list):
        raise ConfigError(f"'steps' must be a list of steps, got {steps!r}")
    data["steps"] = [explicit_step(item, i) for i, item in enumerate(steps)]
    config = from_dict(RecipeConfig, apply_overrides(data, list(overrides)))
    import_modules(config.imports)
    if not isinstance(config.defaults, dict):
        raise ConfigError(f"'defaults' must map step options to values, e.g. {{model: runs/vit_b32}}; got "
                          f"{config.defaults!r}")
    built, names, used = [], set(), set()
    for index, entry in enumerate(config.steps):
        step, options = build_step(entry, index, names, config.defaults, used)
        built.append((step, options))
        names.add(step.name)
    for option in config.defaults:
        if option not in used:
            raise ConfigError(f"'defaults.{option}': no step of the recipe has an option '{option}' left unset")
    check_settings(config)
    resolved = {**dataclasses.asdict(config), "steps": [options for _, options in built]}
    return config, [step for step, _ in built], resolved


def check_settings(config: RecipeConfig) -> None:
    for key in ("input", "output"):
        if not getattr(config, key):
            raise ConfigError(f"'{key}' is not set; give it on the command line, e.g. "
                              f"{key}={'/data/raw/{00000..00099}.tar' if key == 'input' else '/data/clean'}")
    if config.sink.shard_size < 1:
        raise ConfigError(f"'sink.shard_size' must be at least 1, got {config.sink.shard_size}")
    if config.workers is not None and config.workers < 0:
        raise ConfigError(f"'workers' must be at least 0, got {config.workers}")
    if config.ray.actors < 1:
        raise ConfigError(f"'ray.actors' must be at least 1, got {config.ray.actors}")
    if config.ray.gpus_per_actor < 0:
        raise ConfigError(f"'ray.gpus_per_actor' must be at least 0, got {config.ray.gpus_per_actor}")
    if config.ray.cpus_per_actor < 1:
        raise ConfigError(f"'ray.cpus_per_actor' must be at least 1, got {config.ray.cpus_per_actor}")


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """The recipe at ``path`` with ``key=value`` overrides applied; any problem is one ConfigError line naming the
    file (and the step and key, where there is one)."""
    path = Path(path)
    try:
        config, steps, resolved = parse_recipe(read_yaml(path), list(overrides))
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith("recipe file") else f"recipe {path}: {message}") from None
    return Recipe(path, config, steps, resolved)
