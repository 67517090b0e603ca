"""Tokens/s over training steps only: the warm-up (compilation) steps, evaluation and checkpoint writes
are excluded, and the device is synchronized at every boundary so the host clock measures finished work."""

from __future__ import annotations

import time
from typing import Callable


class Throughput:
    def __init__(self, warmup_steps: int, sync: Callable[[], None]) -> None:
        self.warmup_steps, self.sync = warmup_steps, sync
        self.steps = 0
        self.warmup_seconds: float | None = None
        self._start = time.perf_counter()
        self._clock: float | None = None
        self._interval_tokens = 0
        self._interval_seconds = 0.0
        self.total_tokens = 0
        self.total_seconds = 0.0
        self._paused = False

    def step_done(self, tokens: int) -> None:
        self.steps += 1
        if self.steps == self.warmup_steps:
            self.sync()
            self._clock = time.perf_counter()
            self.warmup_seconds = self._clock - self._start
        elif self._clock is not None:
            self._interval_tokens += tokens

    def _collect(self) -> None:
        if self._clock is None:
            return
        self.sync()
        now = time.perf_counter()
        self._interval_seconds += now - self._clock
        self._clock = now

    def pause(self) -> None:
        """Before work that is not training (evaluation, checkpointing)."""
        self._collect()
        if self._clock is not None:
            self._clock = None
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self.sync()
            self._clock = time.perf_counter()
            self._paused = False

    def interval_rate(self) -> float | None:
        """Tokens/s since the previous call (None during warm-up); the totals accumulate."""
        self._collect()
        if not self._interval_tokens or self._interval_seconds <= 0:
            return None
        rate = self._interval_tokens / self._interval_seconds
        self.total_tokens += self._interval_tokens
        self.total_seconds += self._interval_seconds
        self._interval_tokens, self._interval_seconds = 0, 0.0
        return rate

    def overall_rate(self) -> float | None:
        self.interval_rate()
        return self.logged_rate()

    def logged_rate(self) -> float | None:
        """Tokens/s over the intervals already closed by interval_rate(): what an interrupted run can report
        (its last, unfinished interval would count a partial step's time without its tokens)."""
        return self.total_tokens / self.total_seconds if self.total_seconds > 0 else None
