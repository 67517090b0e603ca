"""Encoding corpora once into flat token files (uint16 or uint32), cached and keyed so stale files are never reused."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from cs336_basics.data.corpus import iter_chunks
from cs336_basics.data.encode_workers import cpu_cores, encode_in_workers, encode_texts
from cs336_basics.data.sources import check_file, file_format, iter_file_chunks, resolve_sources, source_key
from cs336_basics.data.tokenizer import EOT, end_token, eot_id, tokenizer_fingerprint, tokenizer_vocab_size
from cs336_basics.files import atomic_path, write_text_atomic

# Chunks encoded together in this process by tokenizers' thread pool: one per core, at most this many. Not more:
# a batch's encodings (~50 bytes a token) are all held until the batch ends, and on 2 cores batches of 16 chunks
# encoded at 2.0 MB/s, batches of 2 at 2.8 MB/s (fresh memory to fault in, fewer cache hits).
CHUNKS_PER_BATCH = 16
POOL_MIN_BYTES = 64 << 20  # smaller corpora are encoded in this process: starting the workers would cost more


@dataclass(frozen=True)
class TokenFile:
    path: Path
    tokens: np.ndarray  # read-only memmap, 1-D
    max_id: int


@dataclass(frozen=True)
class _Batch:
    n_bytes: int  # of the files on disk, for the progress
    after_file: bool  # the first batch of a file after the first: the end-of-document token goes before it


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def resolve_workers(requested: int, total_bytes: int) -> int:
    """The processes to encode with; 1: this process alone, with tokenizers' thread pool over every core.
    0 (the default) is one per core for corpora of POOL_MIN_BYTES or more, else 1."""
    if requested == 0:
        return cpu_cores() if total_bytes >= POOL_MIN_BYTES else 1
    return requested


def encode_files(paths: list[Path], tokenizer: Tokenizer, cache_dir: Path, name: str,
                 text_field: str = "text", workers: int = 0) -> TokenFile:
    """Encode `paths` (in order, separated by the tokenizer's end-of-document token) into `cache_dir`, or reuse
    the cached result.

    Paths may be text, JSON Lines (plain or gzip), Parquet or Arrow files, directories or glob patterns of them,
    or datasets saved with `save_to_disk` (data/sources.py); their documents are separated by that token too,
    and `text_field` names the text in each. The cache key covers the tokenizer's full definition, its end token
    (if not <|endoftext|>, whose keys predate the choice) and each file's path, size and mtime (and the text field,
    but for text files), so a changed corpus or tokenizer produces a new file. `workers` processes encode
    (resolve_workers; the file is the same whatever their number). Writes go to a temporary file renamed at the
    end: a crash never leaves a truncated token file that a later run would trust, and a cached file is used only
    if its size is what its metadata says (n_tokens x the dtype's size): anything else is encoded again.
    """
    paths = resolve_sources(paths)
    for p in paths:
        check_file(p, text_field=text_field)
    separator = end_token(tokenizer)
    key_src = tokenizer_fingerprint(tokenizer) + ("" if separator == EOT else f"|{separator}") + "|"
    key_src += "|".join(source_key(p, text_field) for p in paths)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    bin_path, meta_path = cache_dir / f"{name}-{key}.bin", cache_dir / f"{name}-{key}.json"
    dtype = token_dtype(tokenizer_vocab_size(tokenizer))
    cached = read_cached(bin_path, meta_path, dtype)
    if cached is not None:
        return cached

    n_tokens, max_id, eot = 0, 0, eot_id(tokenizer)
    total_bytes = sum(p.stat().st_size for p in paths)  # the progress counts bytes read from disk (compressed ones)
    workers = resolve_workers(workers, total_bytes)
    threads = max(1, cpu_cores() // workers)  # each worker's share of the cores for tokenizers' own threads
    batches = _batches(paths, text_field, separator, min(CHUNKS_PER_BATCH, threads))
    if workers == 1:
        encoded = ((batch, *encode_texts(tokenizer, texts, dtype)) for texts, batch in batches)
    else:
        encoded = encode_in_workers(batches, tokenizer, dtype, workers, threads)
    desc = f"encoding {name}" + ("" if all(file_format(p) == "text" for p in paths) else " (bytes on disk)")
    desc += f" ({workers} processes)" if workers > 1 else ""
    with atomic_path(bin_path) as tmp_path:  # a failure (a full disk, Ctrl-C) removes the partial file
        # closing: on a failure the workers stop now, not when the traceback lets go of the generator
        with open(tmp_path, "wb") as out, tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc) as bar, \
                closing(encoded):
            for batch, ids, batch_max in encoded:
                if batch.after_file:
                    np.array([eot], dtype=dtype).tofile(out)
                    n_tokens += 1
                ids.tofile(out)
                n_tokens, max_id = n_tokens + ids.size, max(max_id, batch_max)
                bar.update(batch.n_bytes)
    meta = dict(dtype=np.dtype(dtype).name, n_tokens=n_tokens, max_id=max_id,
                sources=[source_key(p, text_field) for p in paths],
                tokenizer=tokenizer_fingerprint(tokenizer), separator=separator)
    write_text_atomic(meta_path, json.dumps(meta, indent=1))
    return TokenFile(bin_path, _memmap(bin_path, dtype, n_tokens), max_id)


def _batches(paths: list[Path], text_field: str, separator: str, size: int) -> Iterator[tuple[list[str], _Batch]]:
    """The chunks of every file, `size` at a time (a batch never spans two files), with what the writer needs."""
    for i, path in enumerate(paths):
        chunks, first = _chunks(path, text_field, separator), True
        while (batch := list(islice(chunks, size))) or first:
            yield [c for c, _ in batch], _Batch(sum(n for _, n in batch), after_file=i > 0 and first)
            first = False


def _chunks(path: Path, text_field: str, separator: str) -> Iterator[tuple[str, int]]:
    """(text chunk, bytes of the file on disk it covers) of one corpus file."""
    if file_format(path) == "text":
        for chunk in iter_chunks(path):
            yield chunk, len(chunk.encode("utf-8"))
    else:
        yield from iter_file_chunks(path, text_field, separator)


def _memmap(path: Path, dtype, n_tokens: int) -> np.ndarray:
    if n_tokens == 0:  # np.memmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n_tokens,))


def read_cached(bin_path: Path, meta_path: Path, expected_dtype=None) -> TokenFile | None:
    """The cached token file if it is whole: its metadata readable and its size n_tokens x the dtype's size;
    otherwise (a truncated or damaged file, metadata of another write) None, and it is encoded again."""
    if not (bin_path.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        dtype = np.dtype(meta["dtype"])
        n_tokens, max_id = int(meta["n_tokens"]), int(meta["max_id"])
        size = bin_path.stat().st_size
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"cached token file {bin_path}: its metadata {meta_path} is unreadable ({type(e).__name__}); "
              f"encoding again", file=sys.stderr)
        return None
    if expected_dtype is not None and dtype != np.dtype(expected_dtype):
        print(f"cached token file {bin_path} holds {dtype.name}, not the {np.dtype(expected_dtype).name} this "
              f"tokenizer needs; encoding again", file=sys.stderr)
        return None
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)) or size != n_tokens * dtype.itemsize:
        print(f"cached token file {bin_path} has {size:,} bytes, not the {n_tokens:,} x {dtype.itemsize} its metadata "
              f"says (truncated or damaged); encoding again", file=sys.stderr)
        return None
    return TokenFile(bin_path, _memmap(bin_path, dtype, n_tokens), max_id)
