"""Corpus sources beyond UTF-8 text files: JSON Lines (plain or gzip), Parquet, Arrow record batch streams and
Hugging Face datasets written by `save_to_disk`, named one by one, as a directory or as a glob pattern.

Each JSON line, Parquet row or Arrow row is one document; documents are separated by the tokenizer's
end-of-document token (<|endoftext|> for this project's tokenizers), as files are. Everything is read as a stream
(line by line, by record batches) so memory stays bounded whatever the size of the corpus; only pyarrow is needed,
not `datasets`.
"""

from __future__ import annotations

import glob
import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import cs336_basics.data.corpus as corpus
from cs336_basics.data.tokenizer import EOT
from cs336_basics.errors import UserError

# suffix -> format; .jsonl.gz is matched before the last suffix
FORMATS = {".txt": "text", ".jsonl": "jsonl", ".jsonl.gz": "jsonl.gz", ".parquet": "parquet", ".arrow": "arrow"}
# suffixes that are surely not UTF-8 text (any other suffix is read as text, as before)
UNSUPPORTED = {".gz", ".zst", ".bz2", ".xz", ".zip", ".tar", ".json", ".csv", ".tsv", ".feather", ".npy", ".bin",
               ".pt", ".pkl", ".h5", ".lz4", ".7z"}
SUPPORTED_TEXT = ".txt, .jsonl, .jsonl.gz, .parquet, .arrow"
ARROW_ROWS = 1024  # rows per Parquet batch


def file_format(path: Path) -> str:
    """The format of a corpus file by its name: text, jsonl, jsonl.gz, parquet or arrow; unknown suffixes are
    text (as every file was before), suffixes of other binary or tabular formats an error."""
    name = path.name.lower()
    if name.endswith(".jsonl.gz"):
        return "jsonl.gz"
    suffix = Path(name).suffix
    if suffix in FORMATS:
        return FORMATS[suffix]
    if suffix in UNSUPPORTED:
        hint = " (JSON Lines: one object per line, named .jsonl)" if suffix == ".json" else ""
        raise UserError(f"data file {path} has an unsupported extension {suffix}{hint}; give {SUPPORTED_TEXT} "
                        f"files, a directory of them or a dataset saved with save_to_disk")
    return "text"


def is_pattern(name: str | Path) -> bool:
    return glob.has_magic(str(name)) and not Path(name).exists()


def is_hf_dataset(directory: Path) -> bool:
    return (directory / "state.json").is_file() and (directory / "dataset_info.json").is_file()


def resolve_sources(names: Iterable[str | Path], what: str = "data file") -> list[Path]:
    """The corpus files that `names` (files, directories, glob patterns) stand for, in a deterministic order:
    names in the order given, each pattern's and directory's files sorted by path."""
    return [p for name in names for p in resolve_source(name, what)]


def resolve_source(name: str | Path, what: str = "data file") -> list[Path]:
    if is_pattern(name):
        matches = sorted(glob.glob(str(name), recursive=True))
        if not matches:
            raise UserError(f"{what} pattern {name} matches no file; check the pattern (quote it so the shell "
                            f"leaves it to the program)")
        return [p for m in matches for p in (_directory_files(Path(m), what) if Path(m).is_dir() else [Path(m)])]
    path = Path(name)
    return _directory_files(path, what) if path.is_dir() else [path]


def _directory_files(directory: Path, what: str) -> list[Path]:
    if (directory / "dataset_dict.json").is_file():
        raise UserError(f"{what} {directory} is a DatasetDict of several splits; pass one split's directory "
                        f"(e.g. {directory}/train)")
    if is_hf_dataset(directory):
        try:
            names = [f["filename"] for f in json.loads((directory / "state.json").read_text())["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError):
            names = None
        files = [directory / n for n in names] if names else sorted(directory.glob("*.arrow"))
        if not files:
            raise UserError(f"{what} {directory} is a saved dataset without .arrow files; save it again")
        return files
    files = sorted((p for p in directory.rglob("*") if p.is_file() and not _hidden(p.relative_to(directory))
                    and _supported_name(p)), key=lambda p: p.relative_to(directory).parts)
    if not files:
        raise UserError(f"{what} {directory} is a directory holding no {SUPPORTED_TEXT} file nor a dataset saved "
                        f"with save_to_disk")
    return files


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _supported_name(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".jsonl.gz") or Path(name).suffix in FORMATS


def check_source(name: str | Path, what: str = "data file", text_field: str | None = None) -> list[Path]:
    """Fail early, with a fix, on a source that cannot be read; its files. With `text_field`, Parquet and Arrow
    files must have that column (JSON lines are checked as they are read)."""
    files = resolve_source(name, what)
    for path in files:
        check_file(path, what, text_field)
    return files


def check_file(path: Path, what: str = "data file", text_field: str | None = None) -> None:
    path = Path(path)
    kind = file_format(path)
    if kind in ("text", "jsonl") or path.is_dir() or not path.exists():
        corpus.check_utf8_file(path, what)
        return
    head = corpus.read_head(path, what, 8)
    if kind == "jsonl.gz" and head[:2] != b"\x1f\x8b":
        raise UserError(f"{what} {path} is not gzip-compressed, as its name .jsonl.gz says")
    if kind == "parquet":
        if head[:4] != b"PAR1":
            raise UserError(f"{what} {path} is not a Parquet file (no PAR1 header)")
        if text_field is not None:
            import pyarrow.parquet as pq

            try:
                schema = pq.read_schema(path)
            except Exception as e:  # pyarrow's errors are of several types
                raise UserError(f"{what} {path} is not a readable Parquet file ({_first_line(e)})") from None
            _check_column(path, schema, text_field)
    if kind == "arrow" and text_field is not None:
        with _open_arrow(path) as (_, reader):
            _check_column(path, reader.schema, text_field)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _check_column(path: Path, schema, text_field: str) -> None:  # noqa: ANN001
    import pyarrow as pa

    if text_field not in schema.names:
        raise UserError(f"data file {path} has no column {text_field!r} (its columns: {', '.join(schema.names)}); "
                        f"name the text column with --set data.text_field=NAME")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind)):
        raise UserError(f"data file {path}: column {text_field!r} holds {kind}, not strings; name the text column "
                        f"with --set data.text_field=NAME")


def source_key(path: Path, text_field: str) -> str:
    """Identity of a corpus file for caching: a text file's as before; other formats add the text field."""
    key = corpus.file_key(path)
    return key if file_format(path) == "text" else f"{key}:{text_field}"


def iter_file_chunks(path: Path, text_field: str = "text", separator: str = EOT) -> Iterator[tuple[str, int]]:
    """(text chunk, bytes of the file on disk read since the last chunk) of a structured file: documents
    separated by `separator`, about CHUNK_CHARS characters a chunk, a document never split."""
    kind = file_format(path)
    if kind == "text":
        for chunk in corpus.iter_text_chunks(path):
            yield chunk, len(chunk.encode("utf-8"))
        return
    reader = {"jsonl": _jsonl_documents, "jsonl.gz": _jsonl_documents, "parquet": _parquet_documents,
              "arrow": _arrow_documents}[kind]
    pieces: list[str] = []
    size, first, reported = 0, True, 0
    for doc, position in reader(path, text_field):
        if not first:
            pieces.append(separator)
        first = False
        pieces.append(doc)
        size += len(doc)
        if size >= corpus.CHUNK_CHARS:
            yield "".join(pieces), position - reported
            reported, pieces, size = position, [], 0
    total = path.stat().st_size
    if pieces or reported < total:
        yield "".join(pieces), total - reported


def _jsonl_documents(path: Path, text_field: str) -> Iterator[tuple[str, int]]:
    """(document, bytes read from disk so far); for gzip the compressed position."""
    with open(path, "rb") as raw:
        lines = gzip.GzipFile(fileobj=raw, mode="rb") if file_format(path) == "jsonl.gz" else raw
        try:
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except UnicodeDecodeError as e:
                    raise UserError(f"data file {path} line {n} is not valid UTF-8 ({e.reason}); convert it first") from None
                except ValueError as e:
                    raise UserError(f"data file {path} line {n} is not valid JSON ({getattr(e, 'msg', e)} at column "
                                    f"{getattr(e, 'colno', '?')})") from None
                if not isinstance(obj, dict) or text_field not in obj:
                    has = f"its fields: {', '.join(map(str, obj))}" if isinstance(obj, dict) else "not a JSON object"
                    raise UserError(f"data file {path} line {n} has no field {text_field!r} ({has}); name the text "
                                    f"field with --set data.text_field=NAME")
                text = obj[text_field]
                if not isinstance(text, str):
                    raise UserError(f"data file {path} line {n}: field {text_field!r} holds {type(text).__name__}, "
                                    f"not a string")
                yield text, raw.tell()
        except (OSError, EOFError) as e:  # a damaged or truncated gzip stream
            raise UserError(f"cannot read data file {path} ({_first_line(e)})") from None


def _column_documents(path: Path, batches, text_field: str, position) -> Iterator[tuple[str, int]]:  # noqa: ANN001
    row = 0
    for batch in batches:
        texts = batch.column(batch.schema.get_field_index(text_field)).to_pylist()
        at = position()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UserError(f"data file {path} row {row + i + 1}: column {text_field!r} holds "
                                f"{'null' if text is None else type(text).__name__}, not a string")
            yield text, at
        row += len(texts)


def _parquet_documents(path: Path, text_field: str) -> Iterator[tuple[str, int]]:
    """Row groups read a batch at a time; the position on disk is estimated by the share of rows read."""
    import pyarrow.parquet as pq

    with open(path, "rb") as f:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # pyarrow's errors are of several types
            raise UserError(f"data file {path} is not a readable Parquet file ({_first_line(e)})") from None
        _check_column(path, pf.schema_arrow, text_field)
        size, rows, done = path.stat().st_size, max(pf.metadata.num_rows, 1), [0]

        def batches():
            for batch in pf.iter_batches(batch_size=ARROW_ROWS, columns=[text_field]):
                done[0] += batch.num_rows
                yield batch

        yield from _column_documents(path, batches(), text_field, lambda: size * done[0] // rows)


class _open_arrow:
    """An Arrow IPC stream (what save_to_disk writes) or IPC file, read a record batch at a time from disk."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import pyarrow as pa
        import pyarrow.ipc as ipc

        self.f = pa.OSFile(str(self.path), "rb")
        try:
            try:
                reader = ipc.open_stream(self.f)
            except pa.ArrowInvalid:
                self.f.seek(0)
                file_reader = ipc.open_file(self.f)
                reader = _FileBatches(file_reader)
        except Exception as e:  # pyarrow's errors are of several types
            self.f.close()
            raise UserError(f"data file {self.path} is not a readable Arrow file ({_first_line(e)})") from None
        return self.f, reader

    def __exit__(self, *exc):
        self.f.close()


class _FileBatches:
    def __init__(self, reader):  # noqa: ANN001
        self.reader, self.schema = reader, reader.schema

    def __iter__(self):
        for i in range(self.reader.num_record_batches):
            yield self.reader.get_batch(i)


def _arrow_documents(path: Path, text_field: str) -> Iterator[tuple[str, int]]:
    with _open_arrow(path) as (f, reader):
        _check_column(path, reader.schema, text_field)
        yield from _column_documents(path, reader, text_field, f.tell)
