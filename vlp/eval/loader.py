"""Embedding an evaluation split: images are read, decoded and preprocessed in DataLoader workers, a batch at a
time, while the main process runs the image tower.

An :class:`EvalSplit`'s images are references, not pixels: an in-memory PIL image (the embedded set), a file
path (class folders), or a :class:`SourceImage` (a sample of a ``vlp.data`` source, read with the source's own
reader in the worker). Decoding goes through ``vlp.data.decode.decode_image``, so every format is decoded, and a
bad image skipped, exactly as in training; with ``draft_size`` a large JPEG decodes at 1/2, 1/4 or 1/8 scale when
its short side stays at least the tower's input size (PIL ``draft``), which is most of the decoding time saved for
a small tower.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vlp.data.decode import BadSample, decode_image

MAX_PIXELS = 64_000_000  # as data.max_pixels: a larger image is skipped as too_large, read from its header


@dataclass(frozen=True)
class SourceImage:
    """The image of one sample of ``EvalData.sources[source]``: an index (indexed sources) or a ShardRef."""

    source: int
    ref: object
    name: str  # for the skipped list: the data path and the sample's key

    def __str__(self) -> str:
        return self.name


def load_image(item, sources: list, draft_size: int | None = None) -> Image.Image:
    """An RGB PIL image for a split entry; raises ``BadSample`` naming why it cannot be read."""
    if isinstance(item, Image.Image):
        return decode_image(item, MAX_PIXELS)
    if isinstance(item, Path):
        try:
            data = item.read_bytes()
        except OSError:
            raise BadSample("missing_file") from None
        return decode_image(data, MAX_PIXELS, draft_size)
    source = sources[item.source]
    raw = source.raw(item.ref) if source.indexed else source.read(item.ref)
    if raw.bad:
        raise BadSample(raw.bad)
    return decode_image(raw.image, MAX_PIXELS, draft_size)


def try_load_image(item, sources: list) -> Image.Image | None:
    """``load_image`` at full resolution, or None: for drawing a few images in a report."""
    try:
        return load_image(item, sources)
    except BadSample:
        return None


class EvalImages(Dataset):
    """Split entry ``i`` -> (i, preprocessed pixels), or (i, None) when the image is unusable."""

    def __init__(self, images: list, sources: list, transform, draft_size: int | None):
        self.images, self.sources, self.transform, self.draft_size = images, sources, transform, draft_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None]:
        try:
            return index, self.transform(load_image(self.images[index], self.sources, self.draft_size))
        except BadSample:
            return index, None


def collate_readable(items: list) -> tuple[list[int], torch.Tensor | None, int]:
    """(indices of the readable images, their stacked pixels or None, how many items the batch had)."""
    readable = [(index, pixels) for index, pixels in items if pixels is not None]
    pixels = torch.stack([p for _, p in readable]) if readable else None
    return [index for index, _ in readable], pixels, len(items)


def tower_threads(device: torch.device, workers: int) -> int:
    """Intra-op threads for a CPU tower while ``workers`` processes decode: the cores they leave, at least one.
    On an oversubscribed CPU the tower's threads wait on each other and take cores from the decoding."""
    if device.type != "cpu":
        return torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - workers))


class Embedding:
    """Embeds images batch by batch. The workers start decoding when it is made, so the main process can do
    other work first (the zero-shot classifier) and then collect the features with :meth:`result`.

    Workers decode and preprocess ahead of the tower (``prefetch_factor`` batches each), so memory holds a few
    batches of pixels, never the dataset."""

    def __init__(self, model, images: list, sources: list, batch_size: int, workers: int, fast_decode: bool,
                 desc: str):
        draft_size = model.model.visual.image_size if fast_decode else None
        loader = DataLoader(EvalImages(images, sources, model.preprocess, draft_size), batch_size=batch_size,
                            num_workers=workers, collate_fn=collate_readable)
        self.model, self.total, self.desc, self.workers = model, len(images), desc, workers
        self.batches = iter(loader)

    @torch.inference_mode()
    def result(self) -> tuple[list[int], torch.Tensor]:
        """(positions of the readable images, their L2-normalized features [N, D] on the CPU)."""
        model, readable, features = self.model, [], []
        threads = torch.get_num_threads()
        torch.set_num_threads(tower_threads(model.device, self.workers))
        try:
            with tqdm(total=self.total, desc=self.desc, unit="img") as progress:
                for indices, pixels, count in self.batches:
                    if pixels is not None:
                        readable += indices
                        features.append(model.model.encode_image(pixels.to(model.device)).float().cpu())
                    progress.update(count)
        finally:
            torch.set_num_threads(threads)
        return readable, torch.cat(features) if features else torch.empty(0, model.config.model.embed_dim)
