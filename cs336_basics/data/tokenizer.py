"""Byte-level BPE tokenizer (HF `tokenizers`) with `<|endoftext|>` as a special token that is never split."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

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
