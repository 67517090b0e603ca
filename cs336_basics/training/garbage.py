"""Python's garbage collector during training, as torchtitan runs it: automatic collection off, a collection
of the young generations every `interval` steps instead. Left automatic, a full collection can start in the
middle of any step once the heap holds a compiled model's objects, and it stalls the host (and a GPU that
is waiting for kernel launches) for as long as it takes."""

from __future__ import annotations

import gc
from types import TracebackType


class ScheduledGC:
    """Context manager; `interval` 0 leaves Python's automatic collection as it is."""

    def __init__(self, interval: int) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0, got {interval}")
        self.interval = interval
        self._was_enabled = gc.isenabled()

    def __enter__(self) -> "ScheduledGC":
        self._was_enabled = gc.isenabled()
        if self.interval:
            gc.collect()  # start from a clean heap: what compilation and set-up left behind
            gc.disable()
        return self

    def step_done(self, step: int) -> None:
        if self.interval and step % self.interval == 0:
            gc.collect(1)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.interval and self._was_enabled:
            gc.enable()
