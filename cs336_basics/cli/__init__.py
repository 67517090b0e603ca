"""Command-line entry points. `run_main` turns user errors into one line and a non-zero exit."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from cs336_basics.errors import UserError
from cs336_basics.files import USER_ERRNOS, describe_os_error, describe_write_failure, is_write_failure


def _sigterm_as_interrupt(signum, frame):  # noqa: ANN001
    raise KeyboardInterrupt


def _error(message: str) -> None:
    print("error: " + " ".join(str(message).split("\n")), file=sys.stderr)


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run `main`; a UserError, or a file-system failure that is the user's to fix (a full disk, a read-only or
    missing directory, a permission), prints 'error: ...' on one line and exits 2; Ctrl-C/SIGTERM exits 130."""
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return main(argv)
    except UserError as e:
        _error(str(e))
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        _error("out of host memory; lower --batch_size or --context_length")
        return 1
    except Exception as e:  # noqa: BLE001 - only what the user can fix is turned into one line; the rest re-raised
        if isinstance(e, OSError) and e.errno in USER_ERRNOS:
            _error(describe_os_error(e))
            return 2
        if is_write_failure(e):
            _error(describe_write_failure(e))
            return 2
        if isinstance(e, RuntimeError) and "out of memory" in str(e):
            _error("out of GPU memory; lower --batch_size (raise --gradient_accumulation_steps to keep the "
                   "tokens per step) or drop --no_gradient_checkpointing")
            return 1
        raise
