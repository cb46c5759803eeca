"""An image index: embeddings of a folder of images in a faiss inner-product index.

Embeddings are L2-normalized, so inner product is cosine similarity. The default index is exact
(``IndexFlatIP``); ``nlist`` builds an IVF index (``IVF{nlist},Flat``) trained on the gallery itself, which
scans only ``nprobe`` of its ``nlist`` clusters per query: approximate, and faster on large galleries.
With ``nprobe == nlist`` every cluster is scanned and the results equal the exact index's.

On disk an index is a directory holding ``index.faiss`` and ``index.json`` (image paths, checkpoint, dim).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image

from vlp.config import ConfigError

IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
INDEX_FILE, META_FILE = "index.faiss", "index.json"
FORMAT = "vlp-image-index/1"
DEFAULT_NPROBE = 8
# What PIL raises on a truncated, corrupt or hostile file: none of them should stop a gallery build
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass
class ImageIndex:
    """A faiss index whose row ``i`` is the embedding of ``paths[i]``."""

    index: faiss.Index
    paths: list[str]
    checkpoint: str
    dim: int
    nprobe: int = DEFAULT_NPROBE
    skipped: list[str] = field(default_factory=list)  # gallery files that could not be read

    @property
    def nlist(self) -> int | None:
        """Number of IVF clusters, or None for an exact index."""
        ivf = _ivf(self.index)
        return None if ivf is None else ivf.nlist

    @property
    def kind(self) -> str:
        return "exact" if self.nlist is None else f"ivf (nlist {self.nlist}, nprobe {self.nprobe})"

    def check_dim(self, dim: int) -> None:
        """Fail in one line when query embeddings of width ``dim`` cannot be searched in this index."""
        if dim != self.dim:
            raise ConfigError(f"index embedding dim {self.dim} (built with {self.checkpoint}) does not match "
                              f"the model's embedding dim {dim}")

    def search(self, queries: torch.Tensor, top_k: int = 5, nprobe: int | None = None) -> list[list[tuple[str, float]]]:
        """Query embeddings [N, D] -> per query its ``top_k`` (path, cosine similarity) pairs, best first."""
        self.check_dim(queries.shape[-1])
        ivf = _ivf(self.index)
        if ivf is not None:
            ivf.nprobe = min(nprobe or self.nprobe, ivf.nlist)
        scores, rows = self.index.search(_vectors(queries), min(top_k, len(self.paths)))
        # faiss pads with row -1 when the probed IVF clusters hold fewer than top_k images
        return [[(self.paths[r], float(s)) for s, r in zip(score, row) if r >= 0] for score, row in zip(scores, rows)]

    def save(self, directory: str | Path) -> Path:
        """Write the index to ``directory`` atomically: readers see the old index or the new one, never half."""
        directory = Path(directory)
        if directory.exists() and not is_index_dir(directory):
            raise FileExistsError(f"{directory} exists and is not an image index; not overwriting it")
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        faiss.write_index(self.index, str(staging / INDEX_FILE))
        meta = {"format": FORMAT, "checkpoint": self.checkpoint, "dim": self.dim, "nprobe": self.nprobe,
                "paths": self.paths, "skipped": self.skipped}
        (staging / META_FILE).write_text(json.dumps(meta, indent=1))
        _replace_dir(staging, directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ImageIndex:
        directory = Path(directory)
        if not is_index_dir(directory):
            raise FileNotFoundError(f"no image index in {directory} (expected {INDEX_FILE} and {META_FILE})")
        meta = json.loads((directory / META_FILE).read_text())
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{directory / META_FILE}: unknown index format {meta.get('format')!r}")
        index = faiss.read_index(str(directory / INDEX_FILE))
        if index.ntotal != len(meta["paths"]):
            raise ConfigError(f"{directory}: index holds {index.ntotal} vectors but lists {len(meta['paths'])} paths")
        return cls(index, meta["paths"], meta["checkpoint"], meta["dim"], meta["nprobe"], meta["skipped"])


def is_index_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / INDEX_FILE).is_file() and (path / META_FILE).is_file()


def find_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder``, recursively, by extension (case-insensitive), in a stable sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def build_index(model, folder: str | Path, nlist: int | None = None, nprobe: int = DEFAULT_NPROBE,
                batch_size: int = 64) -> ImageIndex:
    """Embed every readable image under ``folder`` with ``model`` (a ``vlp.api.LoadedModel``) and index them:
    exact by default, IVF with ``nlist`` clusters when given. Unreadable files are skipped and listed in
    ``.skipped``."""
    files = find_images(folder)
    paths, skipped, chunks = [], [], []
    # Decode a batch at a time so a large gallery is never all in memory as pixels, only as embeddings
    for start in range(0, len(files), batch_size):
        images = []
        for path in files[start:start + batch_size]:
            image = _read_image(path)
            (skipped if image is None else paths).append(str(path.resolve()))
            if image is not None:
                images.append(image)
        if images:
            chunks.append(model.embed_images(images, batch_size))
    if not paths:
        raise ConfigError(f"no readable images under {folder} ({len(skipped)} unreadable)")
    vectors = _vectors(torch.cat(chunks))
    index = _new_index(vectors, nlist)
    index.add(vectors)
    # Probing more clusters than exist is probing all of them: store what a search will actually do
    nprobe = min(nprobe, nlist or nprobe)
    return ImageIndex(index, paths, str(model.checkpoint), vectors.shape[1], nprobe, skipped)


def open_gallery(gallery, model, nlist: int | None = None) -> ImageIndex:
    """An ``ImageIndex`` as is, an index directory loaded, or a folder of images indexed now; checked against
    ``model``'s embedding dim."""
    if isinstance(gallery, ImageIndex):
        index = gallery
    elif is_index_dir(gallery):
        index = ImageIndex.load(gallery)
    else:
        index = build_index(model, gallery, nlist)
    index.check_dim(model.config.model.embed_dim)
    return index


def _read_image(path: Path) -> Image.Image | None:
    """The decoded RGB image, or None when the file cannot be decoded."""
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except _UNREADABLE:
        return None


def _vectors(features: torch.Tensor) -> np.ndarray:
    """faiss wants contiguous float32 numpy; normalizing makes inner product cosine whatever the caller passed.
    A copy, because ``normalize_L2`` works in place and ``.numpy()`` shares the caller's tensor memory."""
    vectors = np.array(features.detach().cpu().numpy(), dtype=np.float32, order="C").reshape(-1, features.shape[-1])
    faiss.normalize_L2(vectors)
    return vectors


def _new_index(vectors: np.ndarray, nlist: int | None) -> faiss.Index:
    dim = vectors.shape[1]
    if nlist is None:
        return faiss.IndexFlatIP(dim)
    if not 1 <= nlist <= len(vectors):
        raise ConfigError(f"IVF nlist must be between 1 and the number of images ({len(vectors)}), got {nlist}")
    # index_factory owns its coarse quantizer; a hand-built IndexIVFFlat needs the quantizer kept alive
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    return index


def _ivf(index: faiss.Index):
    """The IVF part of ``index``, or None for a flat index."""
    return faiss.try_extract_index_ivf(index)


def _replace_dir(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``, swapping out an existing ``target`` with two renames."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(staging, target)
    shutil.rmtree(old)
