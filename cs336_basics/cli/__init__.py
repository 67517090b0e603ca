"""Command-line entry points. `run_main` turns user errors into one line and a non-zero exit."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from cs336_basics.errors import UserError


def _sigterm_as_interrupt(signum, frame):  # noqa: ANN001
    raise KeyboardInterrupt


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run `main`; a UserError prints 'error: ...' on one line and exits 2, Ctrl-C/SIGTERM exits 130."""
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of host memory; lower --batch_size or --context_length", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if "out of memory" in str(e):
            print("error: out of GPU memory; lower --batch_size (raise --gradient_accumulation_steps to keep the "
                  "tokens per step) or drop --no_gradient_checkpointing", file=sys.stderr)
            return 1
        raise
