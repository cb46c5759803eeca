"""Small helpers shared across vlp: atomic file writes and the registry."""
from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> factory map. Unknown names fail with the list of valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self._entries, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            valid = ", ".join(sorted(self._entries)) or "none registered"
            raise KeyError(f"unknown {self.kind} '{name}'{hint}; valid: {valid}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_directory(staging: Path, output: Path, marker: str) -> Path:
    """Rename a fully written ``staging`` directory to ``output``. An existing ``output`` is replaced only when it
    is empty or an earlier result of the same kind (it holds ``marker``): never a user's other files."""
    if output.exists():
        if not output.is_dir() or (any(output.iterdir()) and not (output / marker).is_file()):
            raise FileExistsError(f"{output} exists and is not an earlier output of this command (no {marker}); "
                                  "refusing to overwrite it")
        shutil.rmtree(output)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it owner-only
    staging.rename(output)
    return output


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def fsync_tree(root: str | Path) -> None:
    """Flush every file below ``root`` to disk, so that a finished checkpoint survives a power loss too."""
    for path in Path(root).rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
