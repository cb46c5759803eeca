"""Load test for ``vlp serve``: throughput and latency, with server-side batching and without.

    python tools/load_test.py --model runs/demo                  # starts two servers: --max-batch 32 and 1
    python tools/load_test.py --url http://127.0.0.1:8000        # one run against a server already running

Each run sends ``--requests`` requests (one image each, Fashion-MNIST held-out images as PNG) from
``--concurrency`` client threads, stopping early at ``--time-limit`` seconds, and reports requests/s, images/s
(the same here: one image per request), p50 and p99 latency, and the mean batch the server formed (from
``/v1/health``). With ``--model`` the two servers run side by side and their runs alternate ``--rounds`` times,
so a burst of load from other processes hits both; the table shows each run, then the medians, and the last line
is ``batching speedup: X.XX``, the median requests/s with batching over the median without. The clients share
the machine with the servers: on a small CPU they take part of its time.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LABELS = "t-shirt,trouser,pullover,dress,coat,sandal,shirt,sneaker,bag,ankle boot"
COLUMNS = ("server", "max_batch", "requests", "errors", "req/s", "images/s", "p50 ms", "p99 ms", "mean batch")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="run directory or checkpoint: start servers with and without batching")
    target.add_argument("--url", help="base URL of a running vlp serve")
    parser.add_argument("--endpoint", default="classify", choices=["classify", "embed-image"])
    parser.add_argument("--requests", type=int, default=512, help="requests per run (default 512)")
    parser.add_argument("--concurrency", type=int, default=32, help="client threads (default 32)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per run at most (default 60)")
    parser.add_argument("--rounds", type=int, default=3, help="--model: runs per server, alternating (default 3)")
    parser.add_argument("--max-batch", type=int, default=32, help="--model: the batching server's max batch")
    args = parser.parse_args(argv)
    if min(args.requests, args.concurrency, args.rounds, args.max_batch) < 1 or args.time_limit <= 0:
        parser.error("--requests, --concurrency, --rounds, --max-batch and --time-limit must be positive")
    return args


def test_images(count: int = 64) -> list[bytes]:
    """PNG files of the embedded held-out images, as a client would upload them."""
    from vlp.data import load_default

    data = load_default("val")
    images = []
    for i in range(count):
        out = io.BytesIO()
        data.pil(i).save(out, format="PNG")
        images.append(out.getvalue())
    return images


def send(http: httpx.Client, endpoint: str, image: bytes) -> httpx.Response:
    files = {"image": ("image.png", image, "image/png")}
    if endpoint == "classify":
        return http.post("/v1/classify", files=files, data={"labels": LABELS, "templates": "simple", "top_k": "1"})
    return http.post("/v1/embed/image", files=files)


def load(url: str, endpoint: str, images: list[bytes], requests: int, concurrency: int, time_limit: float) -> dict:
    """Send ``requests`` requests from ``concurrency`` threads (or fewer, at ``time_limit``); latencies in s."""
    latencies, errors, lock = [], 0, threading.Lock()
    tickets = iter(range(requests))
    deadline = time.monotonic() + time_limit

    def client():
        nonlocal errors
        with httpx.Client(base_url=url, timeout=time_limit) as http:
            while time.monotonic() < deadline:
                with lock:
                    ticket = next(tickets, None)
                if ticket is None:
                    return
                start = time.perf_counter()
                response = send(http, endpoint, images[ticket % len(images)])
                elapsed = time.perf_counter() - start
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors += 1

    before = health(url)
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    after = health(url)
    forwards = after["forwards"] - before["forwards"]
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / wall,
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "mean_batch": (after["items"] - before["items"]) / forwards if forwards else 0.0}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def health(url: str) -> dict:
    return httpx.get(f"{url}/v1/health", timeout=30).json()["batching"]


@contextlib.contextmanager
def server(model: str, max_batch: int):
    """``vlp serve`` in a child process on a free loopback port; yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "vlp.cli", "serve", "--model", model, "--port", str(port),
               "--max-batch", str(max_batch), "--log-level", "warning"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"load_test: the server exited with code {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            health(url)
            return
        time.sleep(0.2)
    sys.exit(f"load_test: no answer from {url} within {timeout:.0f} s")


def row(name: str, max_batch, result: dict) -> tuple:
    return (name, max_batch, result["requests"], result["errors"], f"{result['rps']:.1f}", f"{result['rps']:.1f}",
            f"{1000 * result['p50']:.1f}", f"{1000 * result['p99']:.1f}", f"{result['mean_batch']:.1f}")


def print_table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in (COLUMNS, *rows)) for i in range(len(COLUMNS))]
    for r in (COLUMNS, *rows):
        print("  ".join(str(cell).rjust(w) if i else str(cell).ljust(w) for i, (cell, w) in enumerate(zip(r, widths))))


def compare(args: argparse.Namespace, images: list[bytes]) -> None:
    """Both servers up at once; their runs alternate, each preceded by a short warmup."""
    settings = [("batching", args.max_batch), ("one at a time", 1)]
    results = {name: [] for name, _ in settings}
    rows = []
    with server(args.model, args.max_batch) as batched, server(args.model, 1) as single:
        urls = {"batching": batched, "one at a time": single}
        for name, _ in settings:  # warmup: first requests build the classifier and warm the allocator
            load(urls[name], args.endpoint, images, 2 * args.concurrency, args.concurrency, args.time_limit)
        for round_ in range(args.rounds):
            for name, max_batch in settings if round_ % 2 == 0 else settings[::-1]:
                result = load(urls[name], args.endpoint, images, args.requests, args.concurrency, args.time_limit)
                results[name].append(result)
                rows.append(row(name, max_batch, result))
    for name, max_batch in settings:
        medians = {key: statistics.median(r[key] for r in results[name])
                   for key in ("requests", "errors", "rps", "p50", "p99", "mean_batch")}
        rows.append(row(f"{name} (median)", max_batch, medians))
    print_table(rows)
    speedup = statistics.median(r["rps"] for r in results["batching"]) / statistics.median(
        r["rps"] for r in results["one at a time"])
    print(f"batching speedup: {speedup:.2f}")


def main(argv=None) -> None:
    args = parse_args(argv)
    images = test_images()
    print(f"endpoint {args.endpoint}, {args.requests} requests per run, {args.concurrency} clients, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if args.url:
        print_table([row(args.url, "?", load(args.url.rstrip("/"), args.endpoint, images, args.requests,
                                             args.concurrency, args.time_limit))])
    else:
        compare(args, images)


if __name__ == "__main__":
    main()
