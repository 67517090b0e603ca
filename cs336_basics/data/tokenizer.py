"""Byte-level BPE tokenizer (HF `tokenizers`) with `<|endoftext|>` as a special token that is never split."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from cs336_basics.errors import UserError
from cs336_basics.files import write_text_atomic

EOT = "<|endoftext|>"


def train_tokenizer(text_chunks: Iterator[str], vocab_size: int, length: int | None = None) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tokenizer.train_from_iterator(text_chunks, trainer=trainer, length=length)
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise UserError(f"cannot load tokenizer {path}: {e}; pass a tokenizer.json written by this project") from None
    if tokenizer.token_to_id(EOT) is None:
        raise UserError(f"tokenizer {path} has no {EOT} token; retrain it with this project")
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    """Write tokenizer.json atomically: an interrupted write never leaves a truncated file to be trusted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, tokenizer.to_str(pretty=True))  # what tokenizer.save writes


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """A short hash of the tokenizer's full definition: token files are keyed by it."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]


def eot_id(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id(EOT)


def token_bytes(tokenizer: Tokenizer) -> np.ndarray:
    """(vocab,) int64: the UTF-8 bytes of the text each token id stands for.

    Exact for the byte-level BPE tokenizers this project trains (and cs336-export writes): the byte-level
    pre-tokenizer maps each of the 256 byte values to one character of ByteLevel.alphabet(), so a vocabulary
    token of n such characters stands for exactly n bytes of the text, and a text's tokens concatenate back to
    its bytes (the decoder joins them with nothing added or dropped). Added tokens (<|endoftext|>) are matched
    literally in the text, so they stand for the UTF-8 bytes of their content. Decoding one id at a time would
    not be exact (a token holding part of a multi-byte character decodes to U+FFFD, 3 bytes), nor would decoding a
    window (a character cut at its ends). Any other kind of tokenizer is refused."""
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    added = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
    sizes = np.zeros(tokenizer.get_vocab_size(with_added_tokens=True), dtype=np.int64)
    for token, i in tokenizer.get_vocab(with_added_tokens=True).items():
        if i in added:
            sizes[i] = len(added[i].encode("utf-8"))
        elif all(c in alphabet for c in token):
            sizes[i] = len(token)
        else:
            raise UserError(f"the model's tokenizer is not byte-level BPE (token {token!r}); bits per byte are "
                            "counted exactly for byte-level tokenizers only, such as this project's")
    return sizes
