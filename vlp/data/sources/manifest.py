"""A manifest: CSV/TSV, JSON lines or Parquet, one row per image-caption pair.

The image column holds a path (relative to the manifest's folder, or absolute) or the image bytes, or an HF-style
``{"bytes", "path"}`` struct. Caption columns hold text or lists of texts. Columns are read once with pyarrow;
image bytes stay in Arrow memory until a worker asks for them.
"""
from __future__ import annotations

from pathlib import Path

from vlp.config import ConfigError
from vlp.data.sources import SOURCES, RawSample, Source

IMAGE_COLUMNS = ("image", "image_path", "filepath", "file", "path", "jpg", "png")
CAPTION_COLUMNS = ("caption", "text", "txt", "title", "alt_text")


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
        fields = cfg.caption_fields or [pick_column(columns, None, CAPTION_COLUMNS, "caption", f"manifest {path}")]
        for name in fields:
            pick_column(columns, name, (), "caption", f"manifest {path}")
        self.caption_fields = fields
        self.images = table.column(image_column).combine_chunks()
        self.captions = {name: table.column(name).to_pylist() for name in fields}

    def __len__(self) -> int:
        return len(self.images)

    def raw(self, index: int) -> RawSample:
        value = self.images[index].as_py()
        if isinstance(value, dict):  # an HF Image struct: bytes, else a path
            value = value.get("bytes") or value.get("path")
        captions = {name: column[index] for name, column in self.captions.items()}
        if isinstance(value, (bytes, bytearray)):
            return RawSample(str(index), bytes(value), captions)
        if not value:
            return RawSample(str(index), None, captions)
        file = Path(value) if Path(value).is_absolute() else self.root / value
        try:
            return RawSample(str(value), file.read_bytes(), captions)
        except OSError:
            return RawSample(str(value), None, captions, bad="missing_file")
