"""Tokenizers: the byte-level BPE this project trains (`<|endoftext|>` a special token that is never split), or any
tokenizer.json of the HF `tokenizers` library (GPT-2's, Llama's, ...), whose own end-of-document token joins
documents and stops generation."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from cs336_basics.errors import UserError
from cs336_basics.files import write_text_atomic

EOT = "<|endoftext|>"
# End-of-document tokens, the first a tokenizer has as a special token wins: GPT-2's (and this project's), Llama 3's
# <|end_of_text|> (before its <|eot_id|>, which ends a chat turn), SentencePiece's </s> (Llama 1-2, Mistral, T5),
# Gemma's <eos>, DeepSeek's.
END_TOKENS = (EOT, "<|end_of_text|>", "</s>", "<eos>", "<｜end▁of▁sentence｜>", "<|eot_id|>")
SPACE_MARK = "▁"  # SentencePiece's stand-in for a space
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))  # SentencePiece's byte fallback: one token per byte


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


def load_tokenizer(path: Path, what: str = "--tokenizer") -> Tokenizer:
    """A tokenizer.json with an end-of-document token (END_TOKENS), or one line saying what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; pass its tokenizer.json")
    if not path.exists():
        raise UserError(f"{what} {path} does not exist; check the path, or omit --tokenizer to train one on the data")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"cannot load tokenizer {path} ({reason}); pass a tokenizer.json of the `tokenizers` "
                        "library") from None
    try:
        end_token(tokenizer)
    except UserError as e:
        raise UserError(f"tokenizer {path} has {e}") from None
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    """Write tokenizer.json atomically: an interrupted write never leaves a truncated file to be trusted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, tokenizer.to_str(pretty=True))  # what tokenizer.save writes


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """A short hash of the tokenizer's full definition: token files are keyed by it."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]


def special_tokens(tokenizer: Tokenizer) -> set[str]:
    """The contents of the tokenizer's special (added) tokens, which text names literally and encodes to one id."""
    return {token.content for token in tokenizer.get_added_tokens_decoder().values()}


def end_token(tokenizer: Tokenizer) -> str:
    """The tokenizer's end-of-document token: the first of END_TOKENS that it has as a special (added) token, which
    the text of a corpus can name (documents are joined by it as text, and it encodes to its one id)."""
    added = special_tokens(tokenizer)
    for token in END_TOKENS:
        if token in added:
            return token
    raise UserError(f"no end-of-document token (none of {', '.join(END_TOKENS)} among its special tokens); add one "
                    f"with tokenizer.add_special_tokens(['{EOT}']) and save it again")


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """A prompt's ids as training encodes its text: without the post-processor's tokens (a Llama tokenizer's <s>),
    which the model never saw before a document."""
    return tokenizer.encode(text, add_special_tokens=False).ids


def eot_id(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id(end_token(tokenizer))


def tokenizer_vocab_size(tokenizer: Tokenizer) -> int:
    """The number of ids the model must have rows for: the largest id + 1, added tokens included."""
    return max(tokenizer.get_vocab_size(with_added_tokens=True),
               max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1)


def token_bytes(tokenizer: Tokenizer) -> np.ndarray:
    """(vocab,) int64: the UTF-8 bytes of the text each token id stands for.

    Byte-level BPE (this project's, GPT-2's, Llama 3's): the byte-level pre-tokenizer maps each of the 256 byte
    values to one character of ByteLevel.alphabet(), so a vocabulary token of n such characters stands for exactly
    n bytes of the text, and a text's tokens concatenate back to its bytes. SentencePiece-style BPE with byte
    fallback (Llama 1-2, Mistral): a <0xNN> token is one byte, any other its UTF-8 length with each ▁ one space;
    exact but for the ▁ such a tokenizer puts before the start of each text it encodes (its "dummy prefix"), which
    counts as one byte that the text does not have: one byte per encoded chunk of about a megabyte. Added tokens
    (<|endoftext|>, </s>) are matched literally in the text, so they stand for the UTF-8 bytes of their content.
    Decoding one id at a time would not be exact (a token holding part of a multi-byte character decodes to U+FFFD,
    3 bytes), nor would decoding a window (a character cut at its ends). Any other kind of tokenizer is refused."""
    added = {i: token.content for i, token in tokenizer.get_added_tokens_decoder().items()}
    vocab = {token: i for token, i in tokenizer.get_vocab(with_added_tokens=True).items() if i not in added}
    sizes = np.zeros(tokenizer_vocab_size(tokenizer), dtype=np.int64)
    for i, content in added.items():
        sizes[i] = len(content.encode("utf-8"))
    spec = json.loads(tokenizer.to_str())
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    if _is_byte_level(spec) and all(c in alphabet for token in vocab for c in token):
        for token, i in vocab.items():
            sizes[i] = len(token)
    elif _is_byte_fallback(spec, vocab):
        byte_tokens = set(BYTE_TOKENS)
        for token, i in vocab.items():
            sizes[i] = 1 if token in byte_tokens else len(token.replace(SPACE_MARK, " ").encode("utf-8"))
    else:
        kind = f"{spec['model'].get('type')} with pre-tokenizer {(spec.get('pre_tokenizer') or {}).get('type')}"
        raise UserError(f"the model's tokenizer ({kind}) is neither byte-level BPE nor BPE with byte fallback; bits "
                        "per byte are counted exactly for those only")
    return sizes


def _is_byte_level(spec: dict) -> bool:
    """The pre-tokenizer maps bytes to ByteLevel.alphabet() (alone, or last in a sequence as Llama 3's)."""
    pre_tokenizer = spec.get("pre_tokenizer") or {}
    steps = pre_tokenizer.get("pretokenizers", [pre_tokenizer])
    return any(step.get("type") == "ByteLevel" for step in steps)


def _is_byte_fallback(spec: dict, vocab: dict[str, int]) -> bool:
    """BPE with byte fallback whose text changes before splitting are only SentencePiece's: spaces to ▁ and a ▁
    before the start (a normalizer of Prepend and Replace, or a Metaspace pre-tokenizer)."""
    model, normalizer, pre_tokenizer = spec["model"], spec.get("normalizer"), spec.get("pre_tokenizer")
    if model.get("type") != "BPE" or not model.get("byte_fallback") or not set(BYTE_TOKENS) <= vocab.keys():
        return False
    steps = (normalizer or {}).get("normalizers", [normalizer] if normalizer else [])
    for step in steps:
        prepend = step.get("type") == "Prepend" and step.get("prepend") == SPACE_MARK
        replace = (step.get("type") == "Replace" and step.get("pattern") == {"String": " "}
                   and step.get("content") == SPACE_MARK)
        if not (prepend or replace):
            return False
    return pre_tokenizer is None or (pre_tokenizer.get("type") == "Metaspace"
                                     and pre_tokenizer.get("replacement") == SPACE_MARK)
