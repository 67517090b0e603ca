"""Encoding text in worker processes: the main process reads the corpus and writes the token file while the workers
encode, and the results come back in the order the texts went out, whatever order the workers finish in."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

import numpy as np
from tokenizers import Tokenizer

T = TypeVar("T")
IN_FLIGHT_PER_WORKER = 2  # batches sent ahead to each worker: one encoding, one waiting; memory stays bounded

_tokenizer: Tokenizer | None = None  # a worker's own, loaded once from the JSON it was started with
_dtype: np.dtype | None = None


def cpu_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def encode_texts(tokenizer: Tokenizer, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, int]:
    """The ids of `texts`, one text's after another's, as `dtype`, and the largest of them (0 for none)."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
    ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings] or [np.zeros(0, np.int64)])
    return ids.astype(dtype), int(ids.max()) if ids.size else 0


def encode_in_workers(batches: Iterable[tuple[list[str], T]], tokenizer: Tokenizer, dtype: np.dtype, workers: int,
                      threads: int) -> Iterator[tuple[T, np.ndarray, int]]:
    """(tag, ids, largest id) of each (texts, tag) of `batches`, in order, encoded by `workers` processes of
    `threads` tokenizer threads each. At most IN_FLIGHT_PER_WORKER batches a worker are read ahead."""
    # forkserver, not fork: this process may already run threads (tokenizers' own pool, torch's), and a forked
    # copy of a lock one of them held would never be released. Unlike spawn, the program's main module (train.py's
    # imports torch) is imported once by the server, not once per worker.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                               initargs=(tokenizer.to_str(), threads, np.dtype(dtype).str))
    pending: deque[tuple[Future, T]] = deque()
    try:
        for texts, tag in batches:
            pending.append((pool.submit(_encode, texts), tag))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                future, done_tag = pending.popleft()
                yield (done_tag, *future.result())
        while pending:
            future, done_tag = pending.popleft()
            yield (done_tag, *future.result())
    finally:  # an error or Ctrl-C here: what is queued is dropped, not encoded
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(tokenizer_json: str, threads: int, dtype: str) -> None:
    global _tokenizer, _dtype
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's: it stops the pool
    # a worker's share of the cores for tokenizers' thread pool, which reads these when it first encodes
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    _tokenizer, _dtype = Tokenizer.from_str(tokenizer_json), np.dtype(dtype)


def _encode(texts: list[str]) -> tuple[np.ndarray, int]:
    return encode_texts(_tokenizer, texts, _dtype)
