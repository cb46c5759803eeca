"""``vlp eval``'s arguments. The implementation (``vlp.eval.command``) is imported only when the command runs,
since torch and the towers take seconds to import and ``vlp --help`` or another command need not pay that."""
from __future__ import annotations

import argparse

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
                        help="'default' (embedded Fashion-MNIST), an image folder (one sub-folder per class), "
                             "or a CSV with columns image and label and/or caption")
    parser.add_argument("--output", help="directory for results.json, results.md and plots "
                                         "(default: MODEL/eval/TASK)")
    parser.add_argument("--templates", nargs="+",
                        help="zero-shot prompts: a set name (openai_imagenet, simple) or strings with {}")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, help="at most this many images per split")
    parser.set_defaults(func=_run)
