"""``vlp data inspect`` and ``vlp data convert``: look at a dataset the way training reads it, and rewrite it as
WebDataset tar shards (the work is in ``vlp.data.inspect`` and ``vlp.data.convert``).

Only argparse is imported at module level, so ``vlp --help`` does not load webdataset.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from vlp.config import ConfigError


def add_data_commands(commands) -> None:
    """Register ``vlp data inspect`` and ``vlp data convert`` on the ``vlp`` subparsers object."""
    data = commands.add_parser("data", help="dataset tools: inspect, convert")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    spec_help = "a dataset spec as in data.train: 'default', '/d/{00000..00009}.tar', a manifest, a folder"

    inspect = data_commands.add_parser("inspect", help="counts, bad samples, caption and image sizes, a grid")
    inspect.add_argument("path", help=spec_help)
    inspect.add_argument("--limit", type=int, help="read at most this many samples (default: all)")
    inspect.add_argument("--grid", default="inspect_grid.png", help="PNG of random usable samples to write")
    inspect.add_argument("--grid-size", type=int, default=16, help="samples in the grid (default 16)")
    inspect.add_argument("--seed", type=int, default=0, help="picks the grid's samples")
    inspect.add_argument("--caption-field", dest="caption_fields", action="append", metavar="FIELD",
                         help="a caption field to read, as in data.train's caption_fields: a manifest or HF column, "
                              "a tar extension, or json.PATH; repeatable (default: the format's usual field)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(func=inspect_command)

    convert = data_commands.add_parser("convert", help="rewrite a dataset as WebDataset tar shards")
    convert.add_argument("src", help=spec_help)
    convert.add_argument("dst", help="directory for shard-000000.tar, ... and sizes.json")
    convert.add_argument("--format", required=True, choices=["webdataset"])
    convert.add_argument("--shard-size", type=int, default=10000, help="samples per shard (default 10000)")
    convert.add_argument("--max-shard-bytes", type=parse_bytes,
                         help="also start a new shard once one holds this many bytes, e.g. 1GB (a shard goes past "
                              "it by less than one sample)")
    convert.add_argument("--caption-field", dest="caption_fields", action="append", metavar="FIELD",
                         help="a caption field to keep, as for inspect; repeat it to keep several (alt-text and "
                              "recaptions). The first usable one goes into KEY.txt, all of them into KEY.json")
    convert.add_argument("--limit", type=int, help="read at most this many samples (default: all)")
    convert.add_argument("--overwrite", action="store_true", help="replace the shards already in DST")
    convert.set_defaults(func=convert_command)


def parse_bytes(text: str) -> int:
    """``1000``, ``64MB``, ``1.5G`` -> bytes (decimal units), for ``--max-shard-bytes``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 500000000 or 500MB, got '{text}'")
    return int(float(match[1]) * 1000 ** " kmgt".index(match[2] or " "))


def _check_at_least_one(**options: int | None) -> None:
    for name, value in options.items():
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def inspect_command(args: argparse.Namespace) -> None:
    from vlp.data.inspect import format_report, inspect

    _check_at_least_one(limit=args.limit, grid_size=args.grid_size)
    report = inspect(args.path, args.caption_fields, args.limit, args.grid, args.grid_size, args.seed)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def convert_command(args: argparse.Namespace) -> None:
    from vlp.data.convert import convert
    from vlp.data.judged import format_counts

    _check_at_least_one(limit=args.limit, shard_size=args.shard_size, max_shard_bytes=args.max_shard_bytes)
    dst = Path(args.dst)
    sizes, bad = convert(args.src, dst, args.caption_fields, args.shard_size, args.max_shard_bytes, args.limit,
                         args.overwrite)
    print(f"wrote {sum(sizes.values())} samples in {len(sizes)} shards to {dst} (skipped: {format_counts(bad)})")
