"""An HF ``datasets`` dataset on local disk: a ``save_to_disk`` directory, or local data files.

Images are read undecoded (``Image(decode=False)``) so that decoding, and its failures, happen in vlp's workers
like every other source.
"""
from __future__ import annotations

from pathlib import Path

from vlp.config import ConfigError
from vlp.data.sources import SOURCES, RawSample, Source
from vlp.data.sources.manifest import caption_fields, pick_column

DATA_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}


def load_local(path: str, split: str):
    import datasets

    target = Path(path)
    try:
        if target.is_dir():
            loaded = datasets.load_from_disk(str(target))
        else:
            builder = DATA_FILE_BUILDERS.get(target.suffix.lower())
            if builder is None:
                raise ConfigError(f"HF data files must be one of {', '.join(DATA_FILE_BUILDERS)}: {path}")
            loaded = datasets.load_dataset(builder, data_files=str(target), split="train")
    except FileNotFoundError as err:
        raise ConfigError(f"HF dataset {path} cannot be loaded: {err}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ConfigError(f"HF dataset {path} has no split '{split}'; splits: {', '.join(loaded)}")
        loaded = loaded[split]
    return loaded


@SOURCES.register("hf")
class HFSource(Source):
    def __init__(self, cfg):
        import datasets

        super().__init__(cfg)
        data = load_local(cfg.path, cfg.split)
        if len(data) == 0:
            raise ConfigError(f"HF dataset {cfg.path} ({cfg.split}) has no rows")
        columns = list(data.column_names)
        image_column = cfg.image_field or next(
            (n for n, f in data.features.items() if isinstance(f, datasets.Image)), None) or pick_column(
            columns, None, ("image", "img", "jpg", "png"), "image", f"HF dataset {cfg.path}")
        if isinstance(data.features.get(image_column), datasets.Image):
            data = data.cast_column(image_column, datasets.Image(decode=False))
        where = f"HF dataset {cfg.path}"
        fields = caption_fields(cfg, columns, where)
        label = data.features.get("label")
        if isinstance(label, datasets.ClassLabel):
            self.class_names = list(label.names)
        self.data, self.image_column, self.caption_fields = data, image_column, fields
        self.root = Path(cfg.path) if Path(cfg.path).is_dir() else Path(cfg.path).parent

    def __len__(self) -> int:
        return len(self.data)

    def raw(self, index: int) -> RawSample:
        row = self.data[index]
        image = row[self.image_column]
        if isinstance(image, dict):
            image = image.get("bytes") or image.get("path")
        captions = {name: row[name] for name in self.caption_fields}
        label = row.get("label")
        label = label if isinstance(label, int) else None  # a ClassLabel, or a column of class indices
        if isinstance(image, str):
            file = Path(image) if Path(image).is_absolute() else self.root / image
            try:
                image = file.read_bytes()
            except OSError:
                return RawSample(str(index), None, captions, label, bad="missing_file")
        return RawSample(str(index), image, captions, label)
