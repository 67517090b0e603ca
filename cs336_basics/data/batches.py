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
    """(B, T) input/target windows at uniformly random offsets; its RNG state is part of a checkpoint."""

    def __init__(self, tokens: np.ndarray, batch_size: int, context_length: int, seed: int) -> None:
        check_length(tokens, context_length, "the training data")
        self.tokens, self.batch_size, self.context_length = tokens, batch_size, context_length
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def next_batch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.context_length
        starts = self.rng.integers(0, len(self.tokens) - T, size=self.batch_size)
        windows = np.stack([self.tokens[s : s + T + 1] for s in starts])  # (B, T + 1)
        return _to_device(windows[:, :-1], device), _to_device(windows[:, 1:], device)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def validation_batches(
    tokens: np.ndarray, batch_size: int, context_length: int, max_batches: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping windows from the start of the file: the same batches at every evaluation."""
    check_length(tokens, context_length, "the validation data")
    T = context_length
    n_windows = min((len(tokens) - 1) // T, batch_size * max_batches)
    for first in range(0, n_windows, batch_size):
        starts = range(first * T, min(first + batch_size, n_windows) * T, T)
        windows = np.stack([tokens[s : s + T + 1] for s in starts])
        yield _to_device(windows[:, :-1], device), _to_device(windows[:, 1:], device)
