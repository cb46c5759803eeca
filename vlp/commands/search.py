"""``vlp classify``, ``vlp search`` and ``vlp index build``: use a trained model on images from the shell.

Only argparse is imported at module level: torch and faiss load when a command runs, so ``vlp --help`` and
argument errors stay instant.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vlp.config import ConfigError


def add_commands(commands) -> None:
    """Register the subcommands on the ``vlp`` subparsers object."""
    classify = commands.add_parser("classify", help="zero-shot classify images into labels given now")
    classify.add_argument("images", nargs="+", help="image files")
    classify.add_argument("--labels", required=True, help='comma-separated class names, e.g. "cat,dog,car"')
    classify.add_argument("--model", required=True, help="run directory or checkpoint")
    classify.add_argument("--templates", default="openai_imagenet", choices=["openai_imagenet", "simple"])
    classify.add_argument("--top-k", type=int, default=3)
    classify.set_defaults(func=classify_command)

    search = commands.add_parser("search", help="search a gallery of images by text or by an image")
    search.add_argument("--model", required=True, help="run directory or checkpoint")
    search.add_argument("--gallery", required=True, help="an index directory or a folder of images")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="text query")
    query.add_argument("--image", help="image query (a file)")
    search.add_argument("--top-k", type=int, default=5)
    search.add_argument("--save-index", help="also save the gallery's index to this directory")
    search.set_defaults(func=search_command)

    index = commands.add_parser("index", help="image index tools")
    index_commands = index.add_subparsers(dest="index_command", required=True)
    build = index_commands.add_parser("build", help="embed a folder of images into a saved faiss index")
    build.add_argument("--model", required=True, help="run directory or checkpoint")
    build.add_argument("--images", required=True, help="folder of images (searched recursively)")
    build.add_argument("--output", required=True, help="index directory to write")
    build.add_argument("--ivf", type=int, metavar="NLIST", help="approximate IVF index with NLIST clusters")
    build.add_argument("--nprobe", type=int, default=8, help="IVF clusters scanned per query (default 8)")
    build.set_defaults(func=index_build_command)


def classify_command(args: argparse.Namespace) -> None:
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise ConfigError("--labels needs at least one class name")
    _check_top_k(args.top_k)
    model = _load(args.model)
    rows = []
    for path in args.images:
        top = _as_config_error(model.classify, Path(path), labels, args.templates, args.top_k)[0]
        rows.append((path, "  ".join(f"{label} {p:.3f}" for label, p in top)))
    print(_table(("image", f"top-{min(args.top_k, len(labels))} labels (probability)"), rows))


def search_command(args: argparse.Namespace) -> None:
    from vlp.search import open_gallery

    _check_top_k(args.top_k)
    model = _load(args.model)
    index = open_gallery(args.gallery, model)
    query = args.text if args.text is not None else Path(args.image)
    results = _as_config_error(model.search, query, index, args.top_k)
    print(_table(("rank", "score", "image"), [(str(i), f"{s:.4f}", p) for i, (p, s) in enumerate(results, 1)]))
    if args.save_index:
        print(f"index: {index.save(args.save_index)} ({len(index.paths)} images, {index.kind})")


def index_build_command(args: argparse.Namespace) -> None:
    from vlp.search import build_index

    if args.nprobe < 1:
        raise ConfigError(f"--nprobe must be at least 1, got {args.nprobe}")
    index = build_index(_load(args.model), args.images, nlist=args.ivf, nprobe=args.nprobe)
    out = index.save(args.output)
    print(f"index: {out} ({len(index.paths)} images indexed, {len(index.skipped)} skipped; {index.kind}, "
          f"dim {index.dim})")


def _load(model_dir: str):
    import vlp

    return vlp.load(model_dir)


def _check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")


def _as_config_error(func, *args):
    """Call ``func``; an unreadable image (ValueError from the model) becomes the CLI's one-line error."""
    try:
        return func(*args)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns, each as wide as its widest cell; the last column is not padded."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip()
                     for row in (header, *rows))
