"""``vlp recipe run`` (clean shards with a recipe) and ``vlp recipe steps`` (the steps a recipe can use). The work
is in ``vlp.recipes``; a recipe is loaded and checked before anything heavy is imported."""
from __future__ import annotations

import argparse
import dataclasses
import sys


def add_recipe_commands(commands) -> None:
    """Register ``vlp recipe run`` and ``vlp recipe steps`` on the ``vlp`` subparsers object."""
    recipe = commands.add_parser("recipe", help="clean WebDataset shards with a recipe: filters, rewrites, dedup")
    recipe_commands = recipe.add_subparsers(dest="recipe_command", required=True)
    run = recipe_commands.add_parser("run", help="run a recipe: cleaner shards plus a report of what was removed")
    run.add_argument("recipe", help="YAML file, e.g. data_recipes/datacomp_basic.yaml")
    run.add_argument("overrides", nargs="*", help="key=value, e.g. input=/data/raw/{00000..00099}.tar "
                                                  "output=/data/clean steps.0.min_words=3 workers=8")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run of a different recipe in the output directory")
    run.add_argument("--engine", help="where the shards are processed: local (this machine, the default) or ray "
                                      "(a Ray cluster; pip install 'vlp[ray]'); the same as engine=NAME")
    run.add_argument("--ray-address", help="the Ray cluster to run on, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS, "
                                           "else one running on this machine, else a new local instance); the same "
                                           "as ray.address=ADDRESS")
    run.set_defaults(func=run_command)
    steps = recipe_commands.add_parser("steps", help="list the steps a recipe can use, with their options")
    steps.set_defaults(func=steps_command)


def run_command(args: argparse.Namespace) -> None:
    from vlp.recipes import load_recipe

    recipe = load_recipe(args.recipe, [*args.overrides, *flag_overrides(args)])
    from vlp.recipes.runner import run_recipe  # vlp.data imports torch: only once the recipe is known to be good

    report = run_recipe(recipe, args.overwrite)
    samples = report["samples"]
    drops = ", ".join(f"{row['name']}/{reason}={count}" for row in report["steps"]
                      for reason, count in row["dropped"].items()) or "none"
    output = recipe.config.output
    print(f"kept {samples['kept']} of {samples['input']} samples in {report['output_shards']} shards in {output} "
          f"(dropped: {drops}); report: {output}/report.md")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """``--engine`` and ``--ray-address`` as the overrides they stand for, last, so that they win."""
    flags = {"engine": args.engine, "ray.address": args.ray_address}
    return [f"{key}={value}" for key, value in flags.items() if value]


def steps_command(args: argparse.Namespace) -> None:
    from vlp.recipes import STEPS

    for name in STEPS.names():
        step = STEPS.get(name)
        options = ", ".join(f"{f.name}={default_of(f)!r}" for f in dataclasses.fields(step.Config)) or "no options"
        about = " ".join((sys.modules[step.__module__].__doc__ or "").split("\n\n")[0].split())
        about = about.split(": ", 1)[1] if about.startswith(f"``{name}``: ") else about
        print(f"{name} ({step.kind} step): {about}\n    options: {options}")


def default_of(spec: dataclasses.Field):
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
