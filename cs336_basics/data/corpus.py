"""Reading UTF-8 corpora in bounded chunks, and the default corpus that needs no download."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from cs336_basics.data.tokenizer import EOT
from cs336_basics.errors import UserError
from cs336_basics.files import write_text_atomic

CHUNK_CHARS = 1 << 20  # ~1 MB of text per chunk: bounded memory whatever the corpus size


def check_text_file(path: Path, what: str = "data file") -> None:
    """Fail early, with a fix, on a missing, unreadable, empty or non-UTF-8 corpus file, or a directory or
    device given where a corpus file belongs. JSON Lines (plain or gzip), Parquet and Arrow files and datasets
    saved with `save_to_disk` are checked as such (their text field when they are read: see data/sources.py)."""
    from cs336_basics.data.sources import check_file, check_source, file_format, is_hf_dataset

    path = Path(path)
    if path.is_dir() and is_hf_dataset(path):
        check_source(path, what)
    elif not path.is_dir() and file_format(path) not in ("text", "jsonl"):
        check_file(path, what)
    else:
        check_utf8_file(path, what)


def check_utf8_file(path: Path, what: str = "data file") -> None:
    """check_text_file of a file read as UTF-8 text (a .txt or a .jsonl)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a text file; pass the files in it "
                        f"(e.g. --train_data {path}/*.txt)")
    if not path.exists():
        hint = "check the path or omit --train_data for the default corpus" if what == "data file" else "check the path"
        raise UserError(f"{what} {path} does not exist; {hint}")
    head = read_head(path, what, 1 << 16, "; give a UTF-8 text file", "; give a UTF-8 text file with content")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a multi-byte character cut at the end of the sample is fine
            raise UserError(
                f"{what} {path} is not UTF-8 text (bad byte at offset {e.start}); convert it with "
                f"`iconv -f <encoding> -t utf-8`"
            ) from None


def read_head(path: Path, what: str, n: int, not_regular: str = "", empty: str = "") -> bytes:
    """The first `n` bytes of an existing file, or a one-line error (with the fix suffixes given) for a device,
    pipe or socket, an empty file or one that cannot be read."""
    if not path.is_file():
        raise UserError(f"{what} {path} is not a regular file (a device, pipe or socket){not_regular}")
    try:
        if path.stat().st_size == 0:
            raise UserError(f"{what} {path} is empty{empty}")
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise UserError(f"cannot read {what} {path} ({e.strerror.lower()}); fix its permissions") from None


def iter_chunks(path: Path, text_field: str = "text", separator: str = EOT) -> Iterator[str]:
    """Yield pieces of about CHUNK_CHARS characters that end at a line boundary. A source of other documents
    (JSON Lines, Parquet, Arrow, a saved dataset, a directory or glob pattern of them) yields its documents
    separated by `separator` (the tokenizer's end-of-document token), its files too, as training encodes them."""
    from cs336_basics.data.sources import file_format, iter_file_chunks, resolve_source

    path = Path(path)
    if path.is_file() and file_format(path) == "text":
        yield from iter_text_chunks(path)
        return
    for i, file in enumerate(resolve_source(path)):
        if i > 0:
            yield separator
        for chunk, _ in iter_file_chunks(file, text_field, separator):
            if chunk:
                yield chunk


def iter_text_chunks(path: Path) -> Iterator[str]:
    """iter_chunks of a UTF-8 text file."""
    pending: list[str] = []
    size = 0
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for line in f:
                pending.append(line)
                size += len(line)
                if size >= CHUNK_CHARS:
                    yield "".join(pending)
                    pending, size = [], 0
    except UnicodeDecodeError as e:
        raise UserError(f"data file {path} is not valid UTF-8 ({e.reason} at byte {e.start} of a chunk); convert it first") from None
    if pending:
        yield "".join(pending)


def file_key(path: Path) -> str:
    """Identity of a corpus file for caching: resolved path, size and modification time."""
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def write_default_corpus(directory: Path, separator: str = EOT) -> tuple[Path, Path]:
    """CPython's bundled documentation topics (`pydoc_data.topics`, ~460 KB of English technical prose,
    shipped with every Python) as one document per topic, joined by `separator` (the end-of-document token of
    the tokenizer that will read them: another one names its own pair of files); every tenth topic goes to
    validation."""
    from pydoc_data.topics import topics

    directory.mkdir(parents=True, exist_ok=True)
    tag = "" if separator == EOT else "-" + hashlib.sha256(separator.encode()).hexdigest()[:8]
    train_path, val_path = directory / f"pydoc_topics_train{tag}.txt", directory / f"pydoc_topics_val{tag}.txt"
    if not (train_path.exists() and val_path.exists()):
        names = sorted(topics)
        val_names = set(names[5::10])
        for path, selected in ((train_path, [n for n in names if n not in val_names]), (val_path, sorted(val_names))):
            write_text_atomic(path, separator.join(topics[n] for n in selected))
    return train_path, val_path
