"""Corpus formats beyond UTF-8 text (data/sources.py): JSON Lines (plain and gzip), Parquet, Arrow streams, datasets
saved with `save_to_disk`, directories and glob patterns of shards; the same tokens as the text they hold, cache
keys that follow the files and the text field, one-line errors, bounded memory."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cs336_basics.config import Config, DataConfig
from cs336_basics.data.corpus import file_key, iter_chunks
from cs336_basics.data.tokenizer import EOT, eot_id, train_tokenizer
from cs336_basics.data.tokens import encode_files
from cs336_basics.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DOCS = [f"Document {i}: the quick brown fox {i * 7} — Ünïcödé ✓ 日本語.\nsecond line {i % 5}\n" for i in range(120)]
DOCS[3] = ""  # an empty document is still one


@pytest.fixture
def tokenizer(small_corpus):
    return train_tokenizer(iter_chunks(small_corpus), vocab_size=400)


def write_jsonl(path: Path, docs: list[str], field: str = "text", compress: bool = False) -> Path:
    text = "".join(json.dumps({"id": i, field: d}) + "\n" for i, d in enumerate(docs))
    if compress:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_parquet(path: Path, docs: list[str], field: str = "text", row_group_size: int = 16) -> Path:
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"id": list(range(len(docs))), field: docs}), path, row_group_size=row_group_size)
    return path


def write_arrow_stream(path: Path, docs: list[str], field: str = "text") -> Path:
    pa, ipc = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.ipc")
    table = pa.table({field: docs})
    with ipc.new_stream(str(path), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=10):
            writer.write_batch(batch)
    return path


def decoded(tokenizer, tf) -> str:  # noqa: ANN001
    return tokenizer.decode(np.asarray(tf.tokens).tolist(), skip_special_tokens=False)


def old_encode(paths: list[Path], tokenizer, chunk_chars: int) -> tuple[str, np.ndarray]:  # noqa: ANN001
    """The cache key and tokens of text files as encode_files computed them before other formats existed."""
    from cs336_basics.data.tokenizer import tokenizer_fingerprint

    key = hashlib.sha256((tokenizer_fingerprint(tokenizer) + "|" + "|".join(
        f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)).encode()).hexdigest()[:16]
    ids: list[int] = []
    for i, p in enumerate(paths):
        if i > 0:
            ids.append(eot_id(tokenizer))
        pending, size = [], 0
        chunks = []
        with open(p, encoding="utf-8", newline="") as f:
            for line in f:
                pending.append(line)
                size += len(line)
                if size >= chunk_chars:
                    chunks.append("".join(pending))
                    pending, size = [], 0
        if pending:
            chunks.append("".join(pending))
        for enc in tokenizer.encode_batch(chunks, add_special_tokens=False):
            ids.extend(enc.ids)
    return key, np.array(ids, dtype=np.uint16)


def test_text_files_encode_exactly_as_before(tokenizer, small_corpus, tmp_path, monkeypatch):
    """Cached token files of text corpora keep their names and contents: same key, same tokens."""
    monkeypatch.setattr("cs336_basics.data.corpus.CHUNK_CHARS", 4096)
    other = tmp_path / "other.txt"
    other.write_text("a second file\r\nwith CRLF lines\n\nand a last one without a newline")
    paths = [small_corpus, other]
    tf = encode_files(paths, tokenizer, tmp_path / "cache", "train")
    key, expected = old_encode(paths, tokenizer, 4096)
    assert tf.path.name == f"train-{key}.bin"
    assert np.array_equal(np.asarray(tf.tokens), expected)
    meta = json.loads(tf.path.with_suffix(".json").read_text())
    assert meta["sources"] == [file_key(p) for p in paths]
    assert DataConfig().text_field == "text"


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "parquet", "arrow"])
def test_each_format_gives_the_tokens_of_its_documents_joined_by_eot(tokenizer, tmp_path, monkeypatch, kind):
    monkeypatch.setattr("cs336_basics.data.corpus.CHUNK_CHARS", 300)  # many chunks: documents across chunk edges
    path = tmp_path / f"docs.{kind}"
    if kind.startswith("jsonl"):
        write_jsonl(path, DOCS, compress=kind.endswith("gz"))
    elif kind == "parquet":
        write_parquet(path, DOCS)
    else:
        write_arrow_stream(path, DOCS)
    tf = encode_files([path], tokenizer, tmp_path / "cache", "train")
    assert decoded(tokenizer, tf) == EOT.join(DOCS)
    expected = tokenizer.encode(EOT.join(DOCS), add_special_tokens=False).ids
    assert np.asarray(tf.tokens).tolist() == expected
    assert "".join(iter_chunks(path)) == EOT.join(DOCS)  # what the tokenizer trainer and cs336-eval read


def test_a_saved_hugging_face_dataset_is_read_with_pyarrow(tokenizer, tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets (a test tool) is not installed")
    directory = tmp_path / "saved"
    datasets.Dataset.from_dict({"content": DOCS, "n": list(range(len(DOCS)))}).save_to_disk(str(directory),
                                                                                            num_shards=3)
    assert (directory / "state.json").exists() and len(list(directory.glob("*.arrow"))) == 3
    data = DataConfig(train_data=(str(directory),), text_field="content", cache_dir=str(tmp_path / "cache"))
    from cs336_basics.data.prepare import prepare_data

    prepared = prepare_data(data, 400, 16, tmp_path / "run")
    tokens = np.concatenate([prepared.train_tokens, prepared.val_tokens])
    assert prepared.tokenizer.decode(tokens.tolist(), skip_special_tokens=False) == EOT.join(DOCS)
    with pytest.raises(UserError, match="no column 'text'"):
        encode_files([directory], tokenizer, tmp_path / "cache", "x")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match="pass one split's directory"):
        encode_files([tmp_path / "dd"], tokenizer, tmp_path / "cache", "x")


def test_directories_and_glob_patterns_of_shards_in_sorted_order(tokenizer, tmp_path):
    shards = tmp_path / "shards"
    (shards / "b").mkdir(parents=True)
    write_jsonl(shards / "10.jsonl", DOCS[40:80])
    write_parquet(shards / "b" / "30.parquet", DOCS[80:])
    write_jsonl(shards / "01.jsonl.gz", DOCS[:40], compress=True)
    (shards / "README.md").write_text("not a shard")
    (shards / ".hidden.jsonl").write_text("{not json")
    tf = encode_files([shards], tokenizer, tmp_path / "cache", "dir")
    assert decoded(tokenizer, tf) == EOT.join(DOCS)
    by_glob = encode_files([str(shards / "*.jsonl*")], tokenizer, tmp_path / "cache", "glob")
    assert decoded(tokenizer, by_glob) == EOT.join(DOCS[:80])
    recursive = encode_files([str(shards / "**" / "*.parquet")], tokenizer, tmp_path / "cache", "rec")
    assert decoded(tokenizer, recursive) == EOT.join(DOCS[80:])


def test_the_cache_follows_each_shard_and_the_text_field(tokenizer, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "a.jsonl", DOCS[:10])
    write_jsonl(shards / "b.jsonl", DOCS[10:20], field="body")
    with pytest.raises(UserError, match=r"b\.jsonl line 1 has no field 'text'"):
        encode_files([shards], tokenizer, tmp_path / "cache", "t")
    write_jsonl(shards / "b.jsonl", DOCS[10:20])
    first = encode_files([shards], tokenizer, tmp_path / "cache", "t")
    assert encode_files([shards], tokenizer, tmp_path / "cache", "t").path == first.path  # reused
    write_jsonl(shards / "b.jsonl", DOCS[10:21])
    os.utime(shards / "b.jsonl", ns=(1, 10**18))
    second = encode_files([shards], tokenizer, tmp_path / "cache", "t")
    assert second.path != first.path and decoded(tokenizer, second) == EOT.join(DOCS[:21])
    write_jsonl(shards / "a.jsonl", DOCS[:10], field="body")
    write_jsonl(shards / "b.jsonl", DOCS[10:21], field="body")
    os.utime(shards / "b.jsonl", ns=(1, 10**18))  # the same size and mtime as the second: only the field differs
    third = encode_files([shards], tokenizer, tmp_path / "cache", "t", text_field="body")
    assert third.path not in (first.path, second.path) and decoded(tokenizer, third) == EOT.join(DOCS[:21])


def test_the_progress_bar_counts_the_bytes_on_disk(tokenizer, tmp_path, monkeypatch):
    import cs336_basics.data.tokens as tokens

    bars = []

    class Bar:
        def __init__(self, total, unit, unit_scale, desc):  # noqa: ANN001
            self.total, self.unit, self.desc, self.n = total, unit, desc, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def update(self, n):  # noqa: ANN001
            self.n += n

    monkeypatch.setattr(tokens, "tqdm", Bar)
    monkeypatch.setattr("cs336_basics.data.corpus.CHUNK_CHARS", 500)
    files = [write_jsonl(tmp_path / "a.jsonl.gz", DOCS * 5, compress=True), write_parquet(tmp_path / "b.parquet", DOCS),
             write_jsonl(tmp_path / "c.jsonl", DOCS)]
    encode_files(files, tokenizer, tmp_path / "cache", "p")
    (bar,) = bars
    assert bar.unit == "B" and "bytes on disk" in bar.desc
    assert bar.total == sum(p.stat().st_size for p in files) == bar.n


def test_bad_sources_are_one_line_errors_naming_the_file(tokenizer, tmp_path):
    cache = tmp_path / "cache"
    cases = []
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n\n{"text": "broken\n')
    cases.append(([bad_json], r"bad\.jsonl line 3 is not valid JSON"))
    not_str = tmp_path / "num.jsonl"
    not_str.write_text('{"text": "fine"}\n{"text": 12}\n')
    cases.append(([not_str], r"num\.jsonl line 2: field 'text' holds int, not a string"))
    not_obj = tmp_path / "list.jsonl"
    not_obj.write_text('["text"]\n')
    cases.append(([not_obj], r"list\.jsonl line 1 has no field 'text' \(not a JSON object\)"))
    cases.append(([write_parquet(tmp_path / "other.parquet", DOCS, field="body")],
                  r"other\.parquet has no column 'text' \(its columns: id, body\)"))
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "null.parquet")
    cases.append(([tmp_path / "null.parquet"], r"null\.parquet row 2: column 'text' holds null"))
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    cases.append(([tmp_path / "ints.parquet"], r"ints\.parquet: column 'text' holds int64, not strings"))
    (tmp_path / "data.csv").write_text("text\nhello\n")
    cases.append(([tmp_path / "data.csv"], r"data\.csv has an unsupported extension \.csv"))
    (tmp_path / "fake.jsonl.gz").write_text('{"text": "not compressed"}\n')
    cases.append(([tmp_path / "fake.jsonl.gz"], r"fake\.jsonl\.gz is not gzip-compressed"))
    (tmp_path / "fake.parquet").write_text("not parquet")
    cases.append(([tmp_path / "fake.parquet"], r"fake\.parquet is not a Parquet file"))
    cases.append(([str(tmp_path / "nothing" / "*.jsonl")], r"nothing/\*\.jsonl matches no file"))
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "notes.md").write_text("x")
    cases.append(([tmp_path / "empty_dir"], r"empty_dir is a directory holding no \.txt, \.jsonl"))
    for paths, message in cases:
        with pytest.raises(UserError, match=message) as e:
            encode_files(paths, tokenizer, cache, "bad")
        assert "\n" not in str(e.value)
    assert not list(cache.glob("*.bin"))
    with pytest.raises(UserError, match="data.text_field must name"):
        Config.from_dict({"data": {"text_field": " "}})


SHARDS, HEADROOM = 12, 40  # ~4 MB a shard; the address space allowed above the loaded libraries, in MB


def test_a_corpus_larger_than_the_memory_limit_streams(tmp_path):
    """~48 MB of JSON Lines in 12 shards (plain and gzip) encoded under an address-space limit of 40 MB above what
    the interpreter, numpy, tokenizers and pyarrow take (the finished token file is not mapped; smaller chunks, so
    that encoding's own working set fits: it needs about 20-28 MB, and 20 failed now and then): the corpus could
    not be read whole, only streamed."""
    text = "the quick brown fox jumps over the lazy dog. " * 40
    tok = tmp_path / "tok.json"
    train_tokenizer(iter([text] * 10), 400).save(str(tok))
    shards = tmp_path / "shards"
    shards.mkdir()
    body = ((json.dumps({"text": text}) + "\n") * 2200).encode()  # ~4 MB each
    for i in range(SHARDS):
        if i % 2:
            (shards / f"{i:02d}.jsonl.gz").write_bytes(gzip.compress(body, compresslevel=1))
        else:
            (shards / f"{i:02d}.jsonl").write_bytes(body)
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        import numpy, tokenizers, pyarrow, pyarrow.parquet  # loaded before the limit: only the data counts
        import cs336_basics.data.corpus as corpus, cs336_basics.data.tokens as tokens
        from cs336_basics.data.tokenizer import load_tokenizer
        corpus.CHUNK_CHARS, tokens.CHUNKS_PER_BATCH = 1 << 16, 4
        tokens._memmap = lambda path, dtype, n: n  # mapping the token file (address space, not memory) is not the test
        tokenizer = load_tokenizer(Path({str(tok)!r}))
        tokenizer.encode_batch(["warm up the thread pool"] * 8)
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        limit = used + {HEADROOM} * 2**20
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError) as e:
            print("SKIP", e)
            sys.exit(0)
        tf = tokens.encode_files([Path({str(shards)!r})], tokenizer, Path({str(tmp_path / "cache")!r}), "big")
        print("TOKENS", tf.tokens, Path(tf.path).stat().st_size)
    """)
    env = {**os.environ, "RAYON_NUM_THREADS": "2", "TQDM_DISABLE": "1", "MALLOC_ARENA_MAX": "2"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    if result.stdout.startswith("SKIP"):
        pytest.skip(f"cannot limit the address space here: {result.stdout.strip()}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert SHARDS * len(body) > HEADROOM * 2**20
    n_tokens, size = map(int, result.stdout.split()[1:3])
    assert size == 2 * n_tokens
    per_doc = len(train_tokenizer(iter([text] * 10), 400).encode(text).ids)
    assert n_tokens == SHARDS * 2200 * (per_doc + 1) - 1  # every document of every shard, one <|endoftext|> between each
