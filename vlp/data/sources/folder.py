"""An image folder: captions in sidecar ``.txt`` files, or one sub-folder per class (captions from templates).

``layout`` is chosen from the files: sidecar captions when any image has a ``.txt`` beside it, else classes
when every image sits in a first-level sub-folder. Files are sorted, so the order is the same on every machine.
"""
from __future__ import annotations

from pathlib import Path

from vlp.config import ConfigError
from vlp.data.sources import SOURCES, RawSample, Source

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CLASS_TEMPLATES = ["a photo of a {}.", "a photo of the {}.", "a picture of a {}.", "an image of a {}."]


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


@SOURCES.register("folder")
class FolderSource(Source):
    def __init__(self, cfg):
        super().__init__(cfg)
        root = Path(cfg.path)
        if not root.is_dir():
            raise ConfigError(f"image folder not found: {root}")
        self.root = root
        self.images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.images:
            raise ConfigError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.sidecars = any(p.with_suffix(".txt").is_file() for p in self.images)
        if self.sidecars:
            self.labels = None
        elif all(p.parent.parent == root for p in self.images):
            folders = sorted({p.parent.name for p in self.images})
            self.class_names = [name.replace("_", " ") for name in folders]
            self.templates = cfg.templates or CLASS_TEMPLATES
            index = {name: i for i, name in enumerate(folders)}
            self.labels = [index[p.parent.name] for p in self.images]
        else:
            raise ConfigError(f"image folder {root} has neither caption files (IMAGE.txt beside IMAGE.jpg) nor one "
                              "sub-folder per class")

    def __len__(self) -> int:
        return len(self.images)

    def raw(self, index: int) -> RawSample:
        path = self.images[index]
        key = str(path.relative_to(self.root))
        if self.labels is not None:
            label = self.labels[index]
            name = self.class_names[label]
            return RawSample(key, _read_bytes(path), {"class": [t.format(name) for t in self.templates]}, label)
        sidecar = path.with_suffix(".txt")
        return RawSample(key, _read_bytes(path), {"txt": _read_bytes(sidecar) if sidecar.is_file() else None})
