"""Encoding with worker processes (data.encode_workers): the same token file as one process writes, batches read
ahead only a bounded number at a time, errors and their clean-up as without workers."""

from __future__ import annotations

import gzip
import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

import cs336_basics.data.encode_workers as encode_workers
from cs336_basics.data.corpus import iter_chunks
from cs336_basics.data.tokenizer import eot_id, train_tokenizer
from cs336_basics.data.tokens import POOL_MIN_BYTES, encode_files, resolve_workers
from cs336_basics.errors import UserError

DOCS = [f"Document {i}: the quick brown fox {i * 7} — Ünïcödé ✓ 日本語 🙂.\nsecond line {i % 5}\n" for i in range(300)]


@pytest.fixture
def tokenizer(small_corpus):
    return train_tokenizer(iter_chunks(small_corpus), vocab_size=400)


@pytest.fixture
def corpus(tmp_path, small_corpus) -> list[Path]:
    """Text, JSON Lines, gzip JSON Lines and text again: many chunks each with CHUNK_CHARS at 2,048."""
    jsonl, gz, text = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz", tmp_path / "c.txt"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:150]))
    gz.write_bytes(gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in DOCS[150:]).encode()))
    text.write_text("a short last file")
    return [small_corpus, jsonl, gz, text]


def reference(paths: list[Path], tokenizer) -> np.ndarray:  # noqa: ANN001
    """The ids of each file's documents and files joined by <|endoftext|>, encoded chunk by chunk as the
    in-process path did before workers existed."""
    ids: list[int] = []
    for i, path in enumerate(paths):
        if i > 0:
            ids.append(eot_id(tokenizer))
        for chunk in iter_chunks(path):
            ids.extend(tokenizer.encode(chunk, add_special_tokens=False).ids)
    return np.array(ids, dtype=np.uint16)


def test_workers_write_the_same_file_as_one_process(tokenizer, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr("cs336_basics.data.corpus.CHUNK_CHARS", 2048)
    files = {workers: encode_files(corpus, tokenizer, tmp_path / f"cache{workers}", "train", workers=workers)
             for workers in (1, 2, 3)}
    expected = reference(corpus, tokenizer)
    assert len(expected) > 20_000 and np.count_nonzero(expected == eot_id(tokenizer)) >= 300 + 2
    for tf in files.values():
        assert tf.path.read_bytes() == expected.tobytes()
        assert tf.max_id == int(expected.max())
    assert len({tf.path.name for tf in files.values()}) == 1  # the key does not depend on the workers
    meta = {json.loads(tf.path.with_suffix(".json").read_text())["n_tokens"] for tf in files.values()}
    assert meta == {len(expected)}


def test_the_default_uses_workers_only_for_corpora_worth_starting_them(monkeypatch):
    monkeypatch.setattr(encode_workers, "cpu_cores", lambda: 8)
    monkeypatch.setattr("cs336_basics.data.tokens.cpu_cores", lambda: 8)
    assert resolve_workers(0, 10 << 20) == 1
    assert resolve_workers(0, POOL_MIN_BYTES) == 8
    assert resolve_workers(3, 1) == 3 and resolve_workers(1, POOL_MIN_BYTES) == 1


def test_batches_are_read_ahead_a_bounded_number_at_a_time(tokenizer):
    read, workers = [], 2

    def batches():
        for i in range(30):
            read.append(i)
            yield [f"text {i} " * 50], i

    for tag, ids, _ in encode_workers.encode_in_workers(batches(), tokenizer, np.dtype(np.uint16), workers, 1):
        assert len(read) - tag <= workers * encode_workers.IN_FLIGHT_PER_WORKER  # in flight: sent, not yet written
        assert np.array_equal(ids, tokenizer.encode(f"text {tag} " * 50).ids)
    assert read == list(range(30))


def test_a_bad_document_stops_the_workers_and_leaves_no_token_file(tokenizer, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr("cs336_basics.data.corpus.CHUNK_CHARS", 2048)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS) + '{"text": 3}\n')
    with pytest.raises(UserError, match=r"bad.jsonl line 301: field 'text' holds int"):
        encode_files([*corpus, bad], tokenizer, tmp_path / "cache", "train", workers=2)
    assert list((tmp_path / "cache").iterdir()) == []
    assert multiprocessing.active_children() == []  # the workers were stopped, not left to the garbage collector
