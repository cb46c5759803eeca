"""``vlp eval``'s arguments. The implementation (``vlp.eval.command``) is imported only when the command runs,
since torch and the towers take seconds to import and ``vlp --help`` or another command need not pay that."""
from __future__ import annotations

import argparse
import os

TASKS = ("zeroshot", "retrieval", "linear-probe", "knn")


def _run(args: argparse.Namespace) -> None:
    from vlp.eval.command import run_eval

    run_eval(args)


def add_eval_parser(commands) -> None:
    """Registers ``vlp eval`` on the CLI's sub-parsers."""
    parser = commands.add_parser("eval", help="evaluate a model: zero-shot, retrieval, linear probe or k-NN")
    parser.add_argument("--model", required=True, help="run directory or checkpoint directory")
    # checked by run_eval rather than argparse ``choices``, so a wrong task is a one-line error
    parser.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)}")
    parser.add_argument("--data", default="default",
                        help="'default' (embedded Fashion-MNIST), an image folder (one sub-folder per class), or "
                             "any dataset training reads: a CSV/TSV/JSONL/Parquet manifest, WebDataset shards "
                             "('d/{000..009}.tar'), an HF save_to_disk directory (docs/eval.md)")
    parser.add_argument("--classes", help="class names, one a line in label order (default: classnames.txt or "
                                          "classes.txt beside the data, else the names the data carries)")
    parser.add_argument("--output", help="directory for results.json, results.md and plots "
                                         "(default: MODEL/eval/TASK)")
    parser.add_argument("--templates", nargs="+",
                        help="zero-shot prompts: a set name (openai_imagenet, simple) or strings with {}")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, help="at most this many images per split")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers decoding and preprocessing images (default: cores, at most 4)")
    parser.add_argument("--fast-decode", action=argparse.BooleanOptionalAction, default=True,
                        help="decode large JPEGs at 1/2-1/8 scale when the image tower's input is still covered "
                             "(as data.fast_decode in training); --no-fast-decode decodes every pixel, as OpenCLIP")
    parser.set_defaults(func=_run)
