"""Small image-caption datasets built on the fly: tar shards, manifests, folders, including broken samples."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def photo(seed: int, size: tuple[int, int] = (40, 32), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(pixels, "RGB")


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """``samples``: (key, {extension: bytes}) in order, written as ``key.extension`` members."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def good_samples(prefix: str, count: int, start: int = 0) -> list[tuple[str, dict[str, bytes]]]:
    return [(f"{prefix}{i:05d}", {"jpg": encode(photo(i)), "txt": f"caption {prefix} {i}".encode(),
                                  "json": json.dumps({"recaption": f"synthetic {prefix} {i}"}).encode()})
            for i in range(start, start + count)]


def good_shards(root: Path, shards: int, per_shard: int, prefix: str = "s") -> str:
    """``shards`` valid shards; returns the brace pattern naming them."""
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        write_shard(root / f"{prefix}-{s:03d}.tar", good_samples(f"{prefix}{s}_", per_shard))
    return str(root / f"{prefix}-{{000..{shards - 1:03d}}}.tar")
