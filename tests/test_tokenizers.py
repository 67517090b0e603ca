"""Existing tokenizers (a tokenizer.json of the `tokenizers` library) given with --tokenizer: their own
end-of-document token joins documents and stops generation, the model's vocabulary follows theirs, and bits per
byte are counted for byte-level and byte-fallback BPE. The tokenizers are built here, small, with no download."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from conftest import TEST_FLAGS, one_line_error, run_train
from cs336_basics.data.corpus import iter_chunks, write_default_corpus
from cs336_basics.data.tokenizer import (BYTE_TOKENS, EOT, end_token, eot_id, load_tokenizer, token_bytes,
                                         tokenizer_vocab_size)
from cs336_basics.data.tokens import encode_files
from cs336_basics.errors import UserError

TEXT = [f"Line {i}: the quick brown fox jumps over the lazy dog {i % 7}; naïve café ✓.\n" for i in range(200)]
SAMPLES = ["Hello world", " leading space", "naïve café — ∑ 𝔘𝔫𝔦 🙂 日本語", "tabs\tand\nnewlines\n\n", "x"]
MODEL_FLAGS = TEST_FLAGS[:TEST_FLAGS.index("--vocab_size")]  # the test model, its vocabulary left to the tokenizer


def gpt2_like(vocab_size: int = 400) -> Tokenizer:
    """Byte-level BPE with <|endoftext|>, as GPT-2's (and this project's)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TEXT, trainer=trainer)
    return tokenizer


def llama_like(merges: int = 120, prepend_scheme: str = "first", specials: tuple[str, ...] = ("<unk>", "<s>", "</s>"),
               ) -> Tokenizer:
    """SentencePiece-style BPE as Llama 2's tokenizer.json: <unk> <s> </s>, then the 256 <0xNN> byte-fallback
    tokens, then the learned pieces (▁ for a space); a ▁ before the first word; <s> before each text when special
    tokens are added."""
    learned = Tokenizer(models.BPE())
    learned.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=prepend_scheme)
    learned.train_from_iterator(TEXT, trainer=trainers.BpeTrainer(vocab_size=merges, show_progress=False))
    spec = json.loads(learned.to_str())["model"]
    pieces = sorted(spec["vocab"], key=spec["vocab"].get)
    vocab = {token: i for i, token in enumerate([*specials, *BYTE_TOKENS, *pieces])}
    merge_pairs = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab, merge_pairs, unk_token=specials[0], byte_fallback=True, fuse_unk=True))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=prepend_scheme)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    if "<s>" in specials:
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer


def saved(tokenizer: Tokenizer, path: Path) -> Path:
    tokenizer.save(str(path))
    return path


def test_the_end_token_is_the_tokenizers_own(tmp_path):
    gpt2, llama = gpt2_like(), llama_like()
    assert end_token(gpt2) == EOT and eot_id(gpt2) == gpt2.token_to_id(EOT)
    assert end_token(llama) == "</s>" and eot_id(llama) == 2
    llama3 = llama_like(specials=("<unk>", "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"))
    assert end_token(llama3) == "<|end_of_text|>"  # the end of a document, not of a chat turn
    loaded = load_tokenizer(saved(llama, tmp_path / "llama.json"))
    assert loaded.encode("a</s>b", add_special_tokens=False).ids.count(2) == 1  # the text names the token


def test_a_tokenizer_without_an_end_token_or_not_a_tokenizer_is_one_line(tmp_path, capsys):
    none = saved(llama_like(specials=("<unk>", "<s>")), tmp_path / "no_end.json")
    with pytest.raises(UserError, match=r"has no end-of-document token \(none of <\|endoftext\|>, .*</s>"):
        load_tokenizer(none)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"version": "1.0", "model": ')
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(TEXT))
    base = [*MODEL_FLAGS, "--train_data", corpus, "--set", f"data.cache_dir={tmp_path / 'cache'}", "--max_steps", 1]
    for path, message in ((none, "has no end-of-document token"), (corrupt, "cannot load tokenizer"),
                          (tmp_path / "missing.json", "does not exist")):
        error = one_line_error(capsys, run_train([*base, "--out_dir", tmp_path / "run", "--tokenizer", path]), message)
        assert str(path) in error
        assert not (tmp_path / "run").exists()


def test_a_vocab_size_set_below_the_tokenizers_is_refused(tmp_path, capsys):
    tok = saved(llama_like(), tmp_path / "llama.json")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(TEXT))
    argv = [*MODEL_FLAGS, "--vocab_size", 256, "--tokenizer", tok, "--train_data", corpus,
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--out_dir", tmp_path / "run", "--max_steps", 1]
    one_line_error(capsys, run_train(argv), "raise --vocab_size")


def test_the_models_vocabulary_follows_the_tokenizer_unless_set(tmp_path, capsys):
    from cs336_basics.cli.train import build_parser, load_config

    tok = saved(llama_like(), tmp_path / "llama.json")
    n = tokenizer_vocab_size(load_tokenizer(tok))
    rounded = -(-n // 64) * 64
    assert n % 64 and 64 <= rounded - n + 64 < 128

    def vocab(*argv) -> int:
        config, _ = load_config(build_parser().parse_args([str(a) for a in argv]), None)
        return config.model.vocab_size

    assert vocab("--tokenizer", tok) == rounded
    assert f"model.vocab_size {rounded}: the tokenizer's {n} tokens" in capsys.readouterr().err
    assert vocab("--config", "tiny", "--tokenizer", tok) == rounded  # the recipe's 2,048 was for its own tokenizer
    assert vocab("--tokenizer", tok, "--vocab_size", 1024) == 1024
    assert vocab("--config", "tiny") == 2048
    recipe = tmp_path / "mine.toml"
    recipe.write_text(f'[model]\nvocab_size = 1024\n[data]\ntokenizer = "{tok}"\n')
    assert vocab("--config", recipe) == 1024  # a recipe that names its tokenizer and its vocabulary keeps both


@pytest.mark.parametrize("make", [gpt2_like, llama_like], ids=["byte-level", "byte-fallback"])
def test_bytes_per_token_add_up_to_the_texts_bytes(make):
    tokenizer = make()
    sizes = token_bytes(tokenizer)
    end = end_token(tokenizer)
    for text in [*SAMPLES, f"one document{end}another"]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        # SentencePiece's dummy prefix: a ▁ before a text that does not start with a space counts one byte more
        prefix = make is llama_like and not text.startswith(" ")
        assert int(sizes[ids].sum()) == len(text.encode("utf-8")) + prefix, text
    assert any(tokenizer.id_to_token(i) in BYTE_TOKENS for i in tokenizer.encode("🙂").ids) or make is gpt2_like
    exact = llama_like(prepend_scheme="never")
    for text in SAMPLES:
        assert int(token_bytes(exact)[exact.encode(text, add_special_tokens=False).ids].sum()) == len(text.encode())


def test_other_tokenizers_are_refused_for_bits_per_byte():
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "</s>": 1, "hello": 2, "##s": 3}, unk_token="[UNK]"))
    with pytest.raises(UserError, match="neither byte-level BPE nor BPE with byte fallback"):
        token_bytes(wordpiece)


def test_documents_and_files_are_joined_by_the_tokenizers_end_token(tmp_path):
    tokenizer = llama_like()
    docs = ["first document", "second one ✓", "", "the last"]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    text = tmp_path / "plain.txt"
    text.write_text("a plain text file\n")
    tf = encode_files([jsonl, text], tokenizer, tmp_path / "cache", "train")
    ids = np.asarray(tf.tokens).tolist()
    assert ids.count(2) == len(docs)  # between the documents, and between the files
    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    assert ids == encode("</s>".join(docs)) + [2] + encode("a plain text file\n")
    assert json.loads(tf.path.with_suffix(".json").read_text())["separator"] == "</s>"
    assert "".join(iter_chunks(jsonl, separator="</s>")) == "</s>".join(docs)  # what cs336-eval reads
    train, _ = write_default_corpus(tmp_path / "default", "</s>")
    ours, _ = write_default_corpus(tmp_path / "default")
    assert train != ours and "</s>" in train.read_text() and EOT not in train.read_text() and EOT in ours.read_text()


def test_training_with_a_llama_like_tokenizer(tmp_path, capsys):
    """Its vocabulary becomes the model's (rounded up to 64) and is recorded in config.toml, its </s> joins the
    documents of the corpus, and the sample after training stops at it."""
    tokenizer = llama_like()
    tok = saved(tokenizer, tmp_path / "tokenizer.json")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": "".join(TEXT[i:i + 5])}) + "\n" for i in range(0, 200, 5)))
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = [*MODEL_FLAGS, "--tokenizer", tok, "--train_data", corpus, "--set", f"data.cache_dir={cache}",
            "--out_dir", out, "--max_steps", 2, "--batch_size", 2, "--eval_interval", 2, "--set", "train.eval_steps=1",
            "--set", "run.sample_tokens=8", "--set", "run.prompt=The quick"]
    assert run_train(argv) == 0
    captured = capsys.readouterr()
    rounded = -(-tokenizer_vocab_size(tokenizer) // 64) * 64
    assert tomllib.loads((out / "config.toml").read_text())["model"]["vocab_size"] == rounded
    assert "sample: The quick" in captured.out
    (meta,) = cache.glob("train-*.json")
    assert json.loads(meta.read_text())["separator"] == "</s>"
    tokens = np.fromfile(meta.with_suffix(".bin"), dtype=np.uint16)
    assert np.count_nonzero(tokens == eot_id(tokenizer)) == 40 - 1  # one between each of the 40 documents
    assert Tokenizer.from_file(str(out / "tokenizer.json")).to_str() == tokenizer.to_str()
