"""The ``vlp`` command line: train, export, tokenizer, eval, classify, search, index, data, recipe, serve."""
from __future__ import annotations

import argparse
import os
import sys

from vlp.commands.data import add_data_commands
from vlp.commands.evaluate import add_eval_parser
from vlp.commands.recipe import add_recipe_commands
from vlp.commands.search import add_commands as add_search_commands
from vlp.errors import ConfigError, DataError
from vlp.serve.command import add_serve_command


def _train(args: argparse.Namespace) -> None:
    from vlp.config import load_config

    config = load_config(args.config, args.overrides)
    # torch, Accelerate and the towers take seconds to import: a bad config fails before them
    from vlp.train.loop import train
    from vlp.train.metrics import summary

    checkpoint = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary(config.run_dir, checkpoint))


def _export(args: argparse.Namespace) -> None:
    from vlp.export.open_clip import export_open_clip

    print(f"exported: {export_open_clip(args.run, args.output)}")


def _tokenizer_train(args: argparse.Namespace) -> None:
    from vlp.data import read_captions
    from vlp.models.tokenizers import train_sentencepiece

    captions = read_captions(args.data)
    out = train_sentencepiece(captions, args.vocab_size, args.output)
    print(f"tokenizer: {out} (trained on {len(captions)} captions)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlp", description="Vision-language contrastive pretraining")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a dual encoder (also under `accelerate launch`)")
    train.add_argument("--config", required=True, help="YAML file, e.g. configs/demo.yaml")
    train.add_argument("--resume", default="none", help="'auto' (newest checkpoint of run_dir), 'none', or a path")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100 data.batch_size=64")
    train.set_defaults(func=_train)

    export = commands.add_parser("export", help="export a run or checkpoint to another library's format")
    export.add_argument("run", help="run directory or checkpoint directory")
    export.add_argument("--format", required=True, choices=["open_clip"])
    export.add_argument("--output", required=True, help="directory to write")
    export.set_defaults(func=_export)

    tokenizer = commands.add_parser("tokenizer", help="tokenizer tools")
    tokenizer_commands = tokenizer.add_subparsers(dest="tokenizer_command", required=True)
    tok_train = tokenizer_commands.add_parser("train", help="train a SentencePiece tokenizer on captions")
    tok_train.add_argument("--data", default="default", help="caption source (default: the embedded set)")
    tok_train.add_argument("--vocab-size", type=int, default=1024)
    tok_train.add_argument("--output", required=True, help="HF tokenizer directory to write")
    tok_train.set_defaults(func=_tokenizer_train)
    add_search_commands(commands)
    add_eval_parser(commands)
    add_data_commands(commands)
    add_recipe_commands(commands)
    add_serve_command(commands)
    return parser


def one_line(err: Exception) -> str:
    """The error's own message; one raised in a dataloader worker arrives wrapped with the worker's traceback."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with ``key=value`` overrides taken wherever they stand: argparse alone stops collecting
    them at the first flag (``vlp recipe run r.yaml --overwrite input=...``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [arg for arg in extra if arg.startswith("-") or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        args.func(args)
    except (ConfigError, DataError, FloatingPointError, FileNotFoundError, FileExistsError) as err:
        print(f"vlp {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except KeyboardInterrupt:
        print(f"vlp {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
