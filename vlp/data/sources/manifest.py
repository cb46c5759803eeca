"""A manifest: CSV/TSV, JSON lines or Parquet, one row per image-caption pair.

The image column holds a path (relative to the manifest's folder, or absolute) or the image bytes, or an HF-style
``{"bytes", "path"}`` struct. Caption columns hold text or lists of texts; an optional ``label`` column holds
class indices or names. Columns are read once with pyarrow; image bytes stay in Arrow memory until a worker asks
for them.
"""
from __future__ import annotations

from pathlib import Path

from vlp.config import ConfigError
from vlp.data.sources import SOURCES, RawSample, Source

IMAGE_COLUMNS = ("image", "image_path", "filepath", "file", "path", "jpg", "png")
CAPTION_COLUMNS = ("caption", "text", "txt", "title", "alt_text")
LABEL_COLUMN = "label"


def read_table(path: Path):
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix in (".jsonl", ".json"):
            return pa_json.read_json(path)
        # every column as text: a caption column of digits must not turn into numbers
        convert = pa_csv.ConvertOptions(column_types={}, strings_can_be_null=False, auto_dict_encode=False)
        parse = pa_csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",", newlines_in_values=True)
        table = pa_csv.read_csv(path, parse_options=parse, convert_options=convert)
        return table.cast(pa.schema([(name, pa.string()) for name in table.column_names]))
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"manifest {path} cannot be read: {str(err).splitlines()[0]}") from None


def pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, where) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ConfigError(f"{where} has no {what} column '{wanted}'; columns: {', '.join(columns)}")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise ConfigError(f"{where} has no {what} column (looked for {', '.join(candidates)}; set image_field / "
                      f"caption_fields); columns: {', '.join(columns)}")


def caption_fields(cfg, columns: list[str], where: str) -> list[str]:
    """The configured caption columns, else the first usual one; a labelled table (image classification) may
    have none."""
    if cfg.caption_fields is None and LABEL_COLUMN in columns and not set(CAPTION_COLUMNS) & set(columns):
        return []
    fields = cfg.caption_fields or [pick_column(columns, None, CAPTION_COLUMNS, "caption", where)]
    for name in fields:
        pick_column(columns, name, (), "caption", where)
    return fields


def read_labels(values: list, where: str) -> tuple[list[int | None] | None, list[str] | None]:
    """A ``label`` column -> (class indices, class names): integers (or, in a CSV, digit strings) are indices;
    other strings are class names, numbered in sorted order as torchvision's ImageFolder numbers folders."""
    present = [v for v in values if v not in (None, "")]
    if all(isinstance(v, int) or isinstance(v, str) and v.isdigit() for v in present):
        return [None if v in (None, "") else int(v) for v in values], None
    if not all(isinstance(v, str) for v in present):
        raise ConfigError(f"{where}: column '{LABEL_COLUMN}' must hold class indices or class names")
    names = sorted(set(present))
    index = {name: i for i, name in enumerate(names)}
    return [index.get(v) for v in values], names


@SOURCES.register("manifest")
class ManifestSource(Source):
    def __init__(self, cfg):
        super().__init__(cfg)
        path = Path(cfg.path)
        if not path.is_file():
            raise ConfigError(f"manifest not found: {path}")
        self.root = path.parent
        table = read_table(path)
        if table.num_rows == 0:
            raise ConfigError(f"manifest {path} has no rows")
        columns = table.column_names
        image_column = pick_column(columns, cfg.image_field, IMAGE_COLUMNS, "image", f"manifest {path}")
        fields = caption_fields(cfg, columns, f"manifest {path}")
        self.caption_fields = fields
        self.images = table.column(image_column).combine_chunks()
        self.captions = {name: table.column(name).to_pylist() for name in fields}
        self.labels = None
        if LABEL_COLUMN in columns:
            self.labels, self.class_names = read_labels(table.column(LABEL_COLUMN).to_pylist(), f"manifest {path}")

    def __len__(self) -> int:
        return len(self.images)

    def raw(self, index: int) -> RawSample:
        value = self.images[index].as_py()
        if isinstance(value, dict):  # an HF Image struct: bytes, else a path
            value = value.get("bytes") or value.get("path")
        captions = {name: column[index] for name, column in self.captions.items()}
        label = self.labels[index] if self.labels is not None else None
        if isinstance(value, (bytes, bytearray)):
            return RawSample(str(index), bytes(value), captions, label)
        if not value:
            return RawSample(str(index), None, captions, label)
        file = Path(value) if Path(value).is_absolute() else self.root / value
        try:
            return RawSample(str(value), file.read_bytes(), captions, label)
        except OSError:
            return RawSample(str(value), None, captions, label, bad="missing_file")
