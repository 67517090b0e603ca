"""One run per run directory: a lock file, `run.lock`, that the run holds from before it touches the directory
until it exits.

The file is created atomically (O_CREAT | O_EXCL: of two runs starting at once exactly one creates it) and
names its holder: pid, host, the boot it runs in, the process's start time and the time the run started. A
second run, new, resumed or overwriting, finds it and is refused with that holder named. A lock whose holder
has gone (its pid no longer runs on this host, or runs a different process, or the host rebooted since) is
stale: it is recovered with a one-line notice. A lock held from another host cannot be checked from here: it is
refused with how to remove it. Under torchrun only rank 0 takes the lock.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from cs336_basics.errors import UserError

LOCK_NAME = "run.lock"
UNREADABLE_GRACE_S = 30.0  # a lock file still being written by its creator is empty for a moment


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (field 22 of /proc/PID/stat): with the pid it
    names one process, so a reused pid is not mistaken for the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def holder_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
            "process_start": _process_start(os.getpid()), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([os.path.basename(sys.argv[0] or "python")] + sys.argv[1:])[:300]}


def describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def holder_state(holder: dict[str, Any]) -> str:
    """'live', 'stale' (gone from this host) or 'remote' (another host: cannot be told from here)."""
    if holder.get("host") != socket.gethostname():
        return "remote"
    boot = _boot_id()
    if holder.get("boot_id") and boot and holder["boot_id"] != boot:
        return "stale"  # the host rebooted since
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or not _pid_alive(pid):
        return "stale"
    start = holder.get("process_start")
    if start is not None and _process_start(pid) not in (None, start):
        return "stale"  # the pid now belongs to another process
    return "live"


def read_holder(path: Path) -> dict[str, Any] | None:
    """The lock's holder, or None if the file is unreadable or incomplete (being written, or damaged)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RunLock:
    """`with RunLock(run_dir):` holds the run directory's lock (creating the directory if needed)."""

    def __init__(self, run_dir: Path, notice=lambda message: print(message, file=sys.stderr)) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.notice = notice
        self.held: dict[str, Any] | None = None

    def check_free(self) -> None:
        """Refuse now if a live run holds the directory (without taking the lock)."""
        if self.path.exists():
            self._refuse_unless_stale(read_holder(self.path), recover=False)

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        info = holder_info()
        data = json.dumps(info, indent=1).encode()
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_unless_stale(read_holder(self.path), recover=True)
                continue
            try:
                os.write(fd, data)
                os.fsync(fd)
            except OSError:
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise
            os.close(fd)
            self.held = info
            return self
        raise UserError(f"{self.run_dir} is being locked and unlocked by other runs; try again")

    def _refuse_unless_stale(self, holder: dict[str, Any] | None, recover: bool) -> None:
        if holder is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return  # released meanwhile: try again
            if age < UNREADABLE_GRACE_S:
                raise UserError(f"{self.run_dir} is being claimed by another run right now ({self.path} is being "
                                f"written); wait for it or choose another --out_dir")
            state, who = "stale", f"an unreadable lock file ({age:.0f} s old)"
        else:
            state, who = holder_state(holder), describe(holder)
        if state == "live":
            raise UserError(f"{self.run_dir} is in use by another run ({who}); wait for it to finish, stop it, or "
                            f"choose another --out_dir")
        if state == "remote":
            raise UserError(f"{self.run_dir} is locked by a run on another host ({who}); if it is no longer running, "
                            f"delete {self.path} and try again")
        if recover:
            self._recover(holder, who)

    def _recover(self, holder: dict[str, Any] | None, who: str) -> None:
        """Move the stale lock out of the way atomically: of several runs recovering it at once only one rename
        succeeds; a lock that was replaced by a live one meanwhile is put back."""
        grave = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return  # another run recovered it first: compete for the fresh one
        if read_holder(grave) != holder:  # not the lock we judged stale: someone's fresh lock
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
            grave.unlink(missing_ok=True)
            raise UserError(f"{self.run_dir} was claimed by another run just now; choose another --out_dir")
        grave.unlink(missing_ok=True)
        self.notice(f"note: recovered a stale lock in {self.run_dir} ({who}, no longer running)")

    def release(self) -> None:
        if self.held is None:
            return
        if read_holder(self.path) == self.held:  # never remove a lock that is not ours
            self.path.unlink(missing_ok=True)
        self.held = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
