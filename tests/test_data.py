import json
import os

import numpy as np
import pytest
import torch

from cs336_basics.data.batches import RandomWindows, validation_batches
from cs336_basics.data.corpus import check_text_file, iter_chunks, write_default_corpus
from cs336_basics.data.tokenizer import EOT, eot_id, load_tokenizer, train_tokenizer
from cs336_basics.data.tokens import encode_files, token_dtype
from cs336_basics.errors import UserError


@pytest.fixture
def tokenizer(small_corpus):
    return train_tokenizer(iter_chunks(small_corpus), vocab_size=400)


def test_tokenizer_round_trips_unicode_and_keeps_eot_whole(tokenizer):
    text = f"héllo wörld ✓ 日本語 🎉{EOT}next document\n\ttabs  and  spaces"
    enc = tokenizer.encode(text)
    assert tokenizer.decode(enc.ids, skip_special_tokens=False) == text
    assert enc.ids.count(eot_id(tokenizer)) == 1
    assert enc.tokens[enc.ids.index(eot_id(tokenizer))] == EOT
    assert tokenizer.get_vocab_size() <= 400


def test_tokenizer_file_round_trip_and_bad_file(tokenizer, tmp_path):
    path = tmp_path / "tok.json"
    tokenizer.save(str(path))
    assert load_tokenizer(path).encode("fox").ids == tokenizer.encode("fox").ids
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="cannot load tokenizer"):
        load_tokenizer(bad)


def test_encoded_file_decodes_to_corpus_and_is_reused(tokenizer, small_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr("cs336_basics.data.corpus.CHUNK_CHARS", 4096)  # many chunks: exercise the streaming path
    tf = encode_files([small_corpus], tokenizer, tmp_path / "cache", "train")
    assert tf.tokens.dtype == np.uint16
    assert tokenizer.decode(tf.tokens.tolist(), skip_special_tokens=False) == small_corpus.read_text(encoding="utf-8")
    meta = json.loads(tf.path.with_suffix(".json").read_text())
    assert meta["n_tokens"] == len(tf.tokens) and meta["max_id"] == int(tf.tokens.max())
    again = encode_files([small_corpus], tokenizer, tmp_path / "cache", "train")
    assert again.path == tf.path  # reused


def test_changed_corpus_or_tokenizer_gets_a_new_token_file(tokenizer, small_corpus, tmp_path):
    first = encode_files([small_corpus], tokenizer, tmp_path, "train").path
    small_corpus.write_text(small_corpus.read_text(encoding="utf-8") + "one more line\n", encoding="utf-8")
    os.utime(small_corpus, ns=(1, 10**18))
    second = encode_files([small_corpus], tokenizer, tmp_path, "train").path
    other = train_tokenizer(iter_chunks(small_corpus), vocab_size=300)
    third = encode_files([small_corpus], other, tmp_path, "train").path
    assert len({first, second, third}) == 3


def test_multiple_files_are_separated_by_eot(tokenizer, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first file")
    b.write_text("second file")
    tf = encode_files([a, b], tokenizer, tmp_path / "cache", "ab")
    assert tokenizer.decode(tf.tokens.tolist(), skip_special_tokens=False) == f"first file{EOT}second file"


def test_token_dtype():
    assert token_dtype(50304) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"ok text \xff\xfe\x00 more text " * 10, "not UTF-8"),
])
def test_bad_text_files(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        check_text_file(path)


def test_random_windows_bounds_and_targets():
    tokens = np.arange(1000, dtype=np.uint16)
    sampler = RandomWindows(tokens, batch_size=64, context_length=16, seed=0)
    for _ in range(20):
        x, y = sampler.next_batch(torch.device("cpu"))
        assert x.shape == y.shape == (64, 16) and x.dtype == torch.int64
        assert int(x.min()) >= 0 and int(y.max()) <= 999
        torch.testing.assert_close(y, x + 1)  # targets are the next tokens


def test_random_windows_state_restores_the_stream():
    tokens = np.arange(5000, dtype=np.uint16)
    a = RandomWindows(tokens, 4, 8, seed=3)
    a.next_batch(torch.device("cpu"))
    state = a.state_dict()
    expected = a.next_batch(torch.device("cpu"))[0]
    b = RandomWindows(tokens, 4, 8, seed=99)
    b.load_state_dict(state)
    torch.testing.assert_close(b.next_batch(torch.device("cpu"))[0], expected)


def test_validation_batches_are_deterministic_and_cover_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = list(validation_batches(tokens, 4, 10, max_batches=100, device=torch.device("cpu")))
    assert sum(x.shape[0] for x, _ in batches) == 99  # (1000 - 1) // 10 windows
    assert batches[0][0][1, 0] == 10 and batches[-1][0][-1, 0] == 980
    again = list(validation_batches(tokens, 4, 10, max_batches=2, device=torch.device("cpu")))
    assert len(again) == 2 and torch.equal(again[0][0], batches[0][0])


def test_corpus_shorter_than_a_window():
    with pytest.raises(UserError, match="fewer than one context window"):
        RandomWindows(np.arange(10, dtype=np.uint16), 2, 16, seed=0)


def test_default_corpus(tmp_path):
    train, val = write_default_corpus(tmp_path)
    text = train.read_text(encoding="utf-8")
    assert len(text) > 300_000 and EOT in text and val.stat().st_size > 10_000


def test_prepare_data_holds_out_validation_caches_the_tokenizer_and_checks_the_resumed_one(small_corpus, tmp_path, capsys):
    """data/prepare.py: no --val_data holds out the last 2% (at least a window) of the training tokens; the
    tokenizer is trained once per (files, vocabulary) in the cache and saved into the run directory; a resumed
    run must find its own tokenizer; a vocabulary larger than the model's is refused."""
    from cs336_basics.config import DataConfig
    from cs336_basics.data.prepare import prepare_data
    from cs336_basics.data.tokenizer import tokenizer_fingerprint

    data = DataConfig(train_data=(str(small_corpus),), cache_dir=str(tmp_path / "cache"))
    first = prepare_data(data, 400, 32, tmp_path / "run")
    assert "training a 400-token byte-level BPE tokenizer" in capsys.readouterr().out
    total = len(first.train_tokens) + len(first.val_tokens)
    assert len(first.val_tokens) == max(33, total // 50)
    assert first.info["val_data"] is None and first.info["train_data"] == [str(small_corpus)]
    assert (tmp_path / "run" / "tokenizer.json").exists()
    assert first.info["tokenizer_fingerprint"] == tokenizer_fingerprint(first.tokenizer)

    again = prepare_data(data, 400, 32, tmp_path / "other_run")  # the cached tokenizer and token files
    assert "training a" not in capsys.readouterr().out
    assert np.array_equal(again.train_tokens, first.train_tokens)
    resumed = prepare_data(data, 400, 32, tmp_path / "run", resumed_fingerprint=first.info["tokenizer_fingerprint"])
    assert np.array_equal(resumed.val_tokens, first.val_tokens)
    with pytest.raises(UserError, match="not the one the checkpoint was trained with"):
        prepare_data(data, 400, 32, tmp_path / "run", resumed_fingerprint="another")
    given = DataConfig(train_data=data.train_data, tokenizer=str(tmp_path / "run" / "tokenizer.json"), cache_dir=data.cache_dir)
    with pytest.raises(UserError, match="raise --vocab_size"):
        prepare_data(given, 300, 32, tmp_path / "small_vocab")

    val = tmp_path / "val.txt"
    val.write_text("a separate validation text, long enough for a window or two of tokens. " * 20)
    separate = prepare_data(DataConfig(train_data=(str(small_corpus),), val_data=str(val), cache_dir=data.cache_dir),
                            400, 32, tmp_path / "run3")
    assert len(separate.train_tokens) == total and separate.info["val_data"] == str(val)
