"""Batches from a token file: random windows for training, a fixed deterministic pass for validation."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from cs336_basics.errors import UserError


def check_length(tokens: np.ndarray, context_length: int, what: str) -> None:
    if len(tokens) < context_length + 1:
        raise UserError(
            f"{what} has {len(tokens)} tokens, fewer than one context window plus one ({context_length + 1}); "
            f"give more text or a smaller --context_length"
        )


def _to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(x.astype(np.int64))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class RandomWindows:
    """(B, T) input/target windows at uniformly random offsets; its RNG state is part of a checkpoint.

    With several processes every rank draws the same global batch of B x world_size offsets (one RNG,
    one seed) and keeps its own slice: the ranks' batches are disjoint parts of one deterministic stream,
    and N ranks with micro-batch B see exactly what one process with micro-batch N x B sees."""

    def __init__(self, tokens: np.ndarray, batch_size: int, context_length: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        check_length(tokens, context_length, "the training data")
        self.tokens, self.batch_size, self.context_length = tokens, batch_size, context_length
        self.rank, self.world_size = rank, world_size
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def next_batch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        T, B = self.context_length, self.batch_size
        starts = self.rng.integers(0, len(self.tokens) - T, size=B * self.world_size)[self.rank * B : (self.rank + 1) * B]
        windows = np.stack([self.tokens[s : s + T + 1] for s in starts])  # (B, T + 1)
        return _to_device(windows[:, :-1], device), _to_device(windows[:, 1:], device)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def validation_batches(
    tokens: np.ndarray, batch_size: int, context_length: int, max_batches: int, device: torch.device,
    rank: int = 0, world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping windows from the start of the file: the same batches at every evaluation.
    With several ranks each global batch of batch_size x world_size windows is split between them, and only
    whole global batches are used, so every rank runs the same number of forward passes."""
    check_length(tokens, context_length, "the validation data")
    T = context_length
    available = (len(tokens) - 1) // T
    if world_size > 1:
        if available < world_size:
            raise UserError(f"the validation data has {available} windows of {T} tokens, fewer than the "
                            f"{world_size} processes; give more validation text")
        batch_size = min(batch_size, available // world_size)
        n_windows = min(available, batch_size * world_size * max_batches) // (batch_size * world_size) * batch_size * world_size
    else:
        n_windows = min(available, batch_size * max_batches)
    global_batch = batch_size * world_size
    for first in range(0, n_windows, global_batch):
        mine = range(first + rank * batch_size, min(first + (rank + 1) * batch_size, n_windows))
        windows = np.stack([tokens[w * T : w * T + T + 1] for w in mine])
        yield _to_device(windows[:, :-1], device), _to_device(windows[:, 1:], device)
