"""``vlp serve``: load a model (and optionally an image index) and serve it over HTTP with uvicorn.

Only argparse and the limits dataclass are imported when the parser is built; FastAPI, uvicorn, torch and faiss
load when the command runs.
"""
from __future__ import annotations

import argparse
from dataclasses import fields

from vlp.config import ConfigError
from vlp.serve.limits import Limits


def add_serve_command(commands) -> None:
    """Register ``vlp serve`` on the ``vlp`` subparsers object."""
    serve = commands.add_parser("serve", help="serve a model over HTTP: classify, embed, search (FastAPI)")
    serve.add_argument("--model", required=True, help="run directory or checkpoint")
    serve.add_argument("--index", help="for /v1/search: an index directory (vlp index build) or a folder of "
                                       "images, indexed at start")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine "
                                                           "only; 0.0.0.0 exposes the server to the network)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    serve.add_argument("--max-batch", type=int, default=32, help="most images or texts in one forward pass "
                                                                 "(1 turns batching off)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0,
                       help="longest a request waits for others to fill its batch")
    for spec in fields(Limits):
        serve.add_argument(f"--{spec.name.replace('_', '-')}", type=int, default=spec.default,
                           help=f"{spec.metadata['help']} (default {spec.default})")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> None:
    limits = Limits(**{spec.name: getattr(args, spec.name) for spec in fields(Limits)})
    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise ConfigError(f"--max-batch must be at least 1 and --max-wait-ms at least 0, got {args.max_batch} "
                          f"and {args.max_wait_ms}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    try:
        import uvicorn

        from vlp.serve.app import create_app
    except ImportError as err:
        raise ConfigError(f"vlp serve needs {err.name}: pip install fastapi uvicorn python-multipart") from None
    import vlp
    from vlp.search import open_gallery

    model = vlp.load(args.model, device=args.device)
    index = None if args.index is None else open_gallery(args.index, model)
    app = create_app(model, limits, index, args.max_batch, args.max_wait_ms)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"vlp serve: {model.checkpoint} at http://{host}:{args.port} (API docs: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
