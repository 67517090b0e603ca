"""From a run's data settings to token arrays: the corpus files (text, JSON Lines, Parquet, Arrow, saved datasets,
directories and glob patterns of them: data/sources.py) or the default corpus, the tokenizer (given,
the run's own on resume, or trained once and cached), and the cached token files; the validation split."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from cs336_basics.config import Config, DataConfig
from cs336_basics.data.batches import check_length
from cs336_basics.data.corpus import iter_chunks, write_default_corpus
from cs336_basics.data.sources import check_source, source_key
from cs336_basics.data.tokenizer import (EOT, end_token, load_tokenizer, save_tokenizer, tokenizer_fingerprint,
                                         tokenizer_vocab_size, train_tokenizer)
from cs336_basics.data.tokens import encode_files
from cs336_basics.errors import UserError

VOCAB_MULTIPLE = 64  # a given tokenizer's vocabulary is rounded up to this for the model (fit_vocab_size)


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    info: dict[str, Any]  # what a checkpoint records of the data: files and the tokenizer's fingerprint


def fit_vocab_size(config: Config, command_line: frozenset[str], recipe: frozenset[str],
                   log: Callable[[str], None] = print) -> Config:
    """With a given tokenizer (data.tokenizer), the model's vocab_size becomes the tokenizer's, unless it was set
    on the command line or by the recipe that names the tokenizer too (a recipe's vocab_size is otherwise the size
    of the tokenizer it would train). It is rounded up to a multiple of 64: the embedding and the head are then
    matrices whose dimensions tensor cores and float8 kernels take whole (GPT-2's 50,257 -> 50,304 trains
    measurably faster), for a few rows of ids that never occur. A vocab_size set too small is refused later, by
    the data preparation, with the fix."""
    set_by_user = "model.vocab_size" in command_line or {"model.vocab_size", "data.tokenizer"} <= recipe
    if not config.data.tokenizer or set_by_user:
        return config
    n_tokens = tokenizer_vocab_size(load_tokenizer(Path(config.data.tokenizer)))
    rounded = -(-n_tokens // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    log(f"model.vocab_size {rounded:,}: the tokenizer's {n_tokens:,} tokens, rounded up to a multiple of "
        f"{VOCAB_MULTIPLE} (set --vocab_size to choose another)")
    return replace(config, model=replace(config.model, vocab_size=rounded))


def prepare_tokenizer(data: DataConfig, train_paths: list[Path], vocab_size: int, out_dir: Path,
                      resumed_fingerprint: str | None, given: Tokenizer | None = None) -> Tokenizer:
    """The given tokenizer (data.tokenizer, loaded), the run's own on resume, or one trained on the training data
    (cached by its inputs); written into the run directory as tokenizer.json, replacing whatever an earlier attempt
    left there."""
    saved = out_dir / "tokenizer.json"
    cache_dir = Path(data.cache_dir)
    key = "|".join(source_key(p, data.text_field) for p in train_paths) + f"|{vocab_size}"
    cached = cache_dir / f"tokenizer-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if data.tokenizer:
        tokenizer = given if given is not None else load_tokenizer(Path(data.tokenizer))
    elif resumed_fingerprint is not None:
        tokenizer = resumed_tokenizer(out_dir, resumed_fingerprint, cached)
    elif cached.exists():
        tokenizer = load_tokenizer(cached, "the cached tokenizer")
    else:
        names = ", ".join(map(str, train_paths[:3]))
        names += f" and {len(train_paths) - 3:,} more files" if len(train_paths) > 3 else ""
        print(f"training a {vocab_size}-token byte-level BPE tokenizer on {names}")
        chunks = (chunk for p in train_paths for chunk in iter_chunks(p, data.text_field))
        tokenizer = train_tokenizer(chunks, vocab_size)
        save_tokenizer(tokenizer, cached)
    if resumed_fingerprint is not None and tokenizer_fingerprint(tokenizer) != resumed_fingerprint:
        raise UserError("this tokenizer is not the one the checkpoint was trained with; resume with the run's own "
                        f"{saved} (drop --tokenizer)")
    if tokenizer_vocab_size(tokenizer) > vocab_size:
        raise UserError(f"the tokenizer has {tokenizer_vocab_size(tokenizer)} tokens but the model's vocab_size is "
                        f"{vocab_size}; raise --vocab_size or use a smaller tokenizer")
    if not saved.exists() or _fingerprint_or_none(_read_or_none(saved)) != tokenizer_fingerprint(tokenizer):
        save_tokenizer(tokenizer, saved)  # a new run's, or the checkpoint's where the run's file was another
    return tokenizer


def _read_or_none(path: Path) -> Tokenizer | None:
    try:
        return Tokenizer.from_file(str(path))
    except Exception:
        return None


def resumed_tokenizer(out_dir: Path, fingerprint: str, cached: Path) -> Tokenizer:
    """The tokenizer a checkpoint was trained with, by its fingerprint (which the checkpoint records): the run's
    tokenizer.json, else the copy each checkpoint keeps, else the data cache's. A run's tokenizer.json that is
    another tokenizer (one an earlier failed attempt left) is replaced by the checkpoint's, and said so."""
    saved = out_dir / "tokenizer.json"
    candidates = [saved, *sorted((out_dir / "checkpoints").glob("step_*/tokenizer.json"), reverse=True), cached]
    for candidate in candidates:
        tokenizer = _read_or_none(candidate) if candidate.is_file() else None
        if tokenizer is not None and tokenizer_fingerprint(tokenizer) == fingerprint:
            if candidate != saved:
                print(f"{saved} {'is not' if saved.exists() else 'is missing, not'} the tokenizer the checkpoint "
                      f"was trained with; restored from {candidate}", file=sys.stderr)
            return tokenizer
    if not saved.exists():
        raise UserError(f"{saved} is missing and no checkpoint holds the tokenizer the run was trained with; the run "
                        "cannot be resumed without it")
    raise UserError(f"{saved} is not the one the checkpoint was trained with (fingerprint {fingerprint}), and no "
                    "copy of that tokenizer was found; put the run's own tokenizer.json back, or start a new run")


def _fingerprint_or_none(tokenizer: Tokenizer | None) -> str | None:
    return tokenizer_fingerprint(tokenizer) if tokenizer is not None else None


def prepare_data(data: DataConfig, vocab_size: int, context_length: int, out_dir: Path,
                 resumed_fingerprint: str | None = None) -> PreparedData:
    cache_dir = Path(data.cache_dir)
    given = load_tokenizer(Path(data.tokenizer)) if data.tokenizer else None
    if not data.train_data:  # its documents are joined by the end token of the tokenizer that will encode them
        separator = end_token(given) if given is not None else EOT
        default_train, default_val = write_default_corpus(cache_dir / "default_corpus", separator)
        train_names, val_name = [default_train], default_val
        print(f"data: CPython's bundled documentation topics (pydoc_data.topics), written to {default_train.parent}")
    else:
        train_names, val_name = [Path(p) for p in data.train_data], Path(data.val_data) if data.val_data else None
    # directories and glob patterns stand for their files (sorted); every file is checked before any is read
    train_paths = [p for name in train_names for p in check_source(name, "data file", data.text_field)]
    val_paths = check_source(val_name, "validation file", data.text_field) if val_name else None
    if len(train_paths) > len(train_names):
        print(f"data: {len(train_paths):,} training files")
    tokenizer = prepare_tokenizer(data, train_paths, vocab_size, out_dir, resumed_fingerprint, given)
    train_file = encode_files(train_paths, tokenizer, cache_dir, "train", data.text_field, data.encode_workers)
    if val_paths is not None:
        val_file = encode_files(val_paths, tokenizer, cache_dir, "val", data.text_field, data.encode_workers)
        train_tokens, val_tokens = train_file.tokens, val_file.tokens
        max_id = max(train_file.max_id, val_file.max_id)
    else:  # hold out the tail of the training tokens; training never samples it
        check_length(train_file.tokens, context_length, "the training data")
        n_val = max(context_length + 1, len(train_file.tokens) // 50)
        if len(train_file.tokens) - n_val < context_length + 1:
            raise UserError(f"the training data has {len(train_file.tokens):,} tokens, too few to hold out a validation "
                            f"window of {n_val} and still train on one; pass --val_data or more text")
        train_tokens, val_tokens = train_file.tokens[:-n_val], train_file.tokens[-n_val:]
        max_id = train_file.max_id
    if max_id >= vocab_size:
        raise UserError(f"token file {train_file.path} holds id {max_id} >= the model's vocab_size {vocab_size}; "
                        f"raise --vocab_size or re-encode with the run's tokenizer")
    check_length(train_tokens, context_length, "the training data")
    check_length(val_tokens, context_length, "the validation data")
    print(f"data: {len(train_tokens):,} training tokens, {len(val_tokens):,} validation tokens "
          f"(vocabulary {tokenizer_vocab_size(tokenizer):,})")
    info = {"train_data": [str(p) for p in train_names], "val_data": str(val_name) if val_name else None,
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer)}
    return PreparedData(tokenizer, train_tokens, val_tokens, info)
