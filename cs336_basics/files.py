"""Files written whole or not at all, and the directories we write into.

Every write goes to a temporary name beside the target (`NAME.<pid>.tmp`, or `NAME.<pid>.tmp.EXT` where the
writer needs the extension) and is renamed over the target only once complete: a crash or Ctrl-C leaves the
previous version, a failed write (a full disk) removes its temporary file, and two processes writing the same
cache file never write into one temporary file. `check_writable_dir` refuses, before any work, a directory that
cannot be written (read-only, a file in the way, a virtual file system); `describe_os_error` is the one line a
failed file operation prints.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cs336_basics.errors import UserError

# File-system failures that are the user's to fix (a path, a permission, a full disk): one line, exit 2.
USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                         errno.EISDIR, errno.ENOENT, errno.EEXIST, errno.ENAMETOOLONG, errno.EFBIG, errno.ELOOP,
                         errno.ETXTBSY})
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
VIRTUAL_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def temp_path(path: Path, keep_suffix: bool = False) -> Path:
    """The temporary name a write of `path` goes to: NAME.<pid>.tmp (NAME.<pid>.tmp.EXT with keep_suffix)."""
    if keep_suffix and path.suffix:
        return path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def is_temp_name(name: str) -> bool:
    """A name temp_path (or an older writer: NAME.tmp, NAME.tmp.EXT) gives."""
    return name.endswith(".tmp") or ".tmp." in name


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: Path, keep_suffix: bool = False) -> Iterator[Path]:
    """`with atomic_path(p) as tmp: write(tmp)`: `tmp` is renamed to `p` once the block succeeds, and removed
    if it fails (a full disk, an interrupt), so neither a half-written `p` nor a stray temporary file is left."""
    tmp = temp_path(Path(path), keep_suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_stray_temps(*directories: Path) -> list[Path]:
    """Remove the temporary files (and sharded-checkpoint temporary directories) an interrupted or failed write
    left in `directories` (not below them); returns what was removed."""
    removed = []
    for directory in directories:
        try:
            entries = list(Path(directory).iterdir())
        except OSError:
            continue
        for entry in entries:
            if not is_temp_name(entry.name):
                continue
            if entry.name.endswith(".old.tmp") and not entry.with_name(entry.name[:-len(".old.tmp")]).exists():
                continue  # the old copy of a replacement that did not finish: the only copy, kept
            remove_quietly(entry)
            removed.append(entry)
    return removed


def virtual_root(path: Path) -> Path | None:
    resolved = Path(os.path.abspath(path))
    with contextlib.suppress(OSError, RuntimeError):
        resolved = Path(path).resolve()
    return next((root for root in VIRTUAL_ROOTS if resolved == root or root in resolved.parents), None)


def check_writable_dir(path: Path, what: str, fix: str = "choose another directory") -> None:
    """Refuse, before any work, a directory that cannot be created or written: one under /proc, /sys or /dev,
    a file where it or one of its parents should be, a read-only file system or one without permission. Creates
    nothing: the test file it writes (in the directory, or in its nearest existing parent) is removed at once."""
    path = Path(path)
    root = virtual_root(path)
    if root is not None:
        raise UserError(f"{what} {path} is under {root}, which the kernel provides, not a place for files; {fix}")
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a directory; {fix}")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {path} cannot be created: {probe} is a file, not a directory; {fix}")
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        where = path if probe == path else f"{path} (its parent {probe})"
        raise UserError(f"{what} {where} is not writable: {e.strerror.lower()}; {fix}") from None


def free_bytes(path: Path) -> int | None:
    """Free space on the file system of `path` (or its nearest existing parent); None if unknown."""
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def describe_os_error(e: OSError, context: str = "") -> str:
    """One line for a failed file operation: what happened, to which path, and what to do about it."""
    path = e.filename if e.filename is not None else None
    if path is not None and e.filename2 is not None:
        path = f"{e.filename} -> {e.filename2}"
    where = f" {path}" if path is not None else ""
    context = f" {context}" if context else ""
    code = e.errno
    if code in DISK_FULL:
        return (f"no space left on the device{context}{' writing' + where if where else ''}; free some space "
                f"(finished files and older checkpoints are kept) or choose another directory")
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied{context}:{where or ' (no path given)'}; fix the permissions or choose another path"
    if code == errno.EROFS:
        return f"read-only file system{context}:{where}; choose a writable directory"
    if code == errno.ENOTDIR:
        return f"not a directory{context}:{where} (a part of the path is a file); fix the path"
    if code == errno.EISDIR:
        return f"is a directory{context}:{where} (expected a file); fix the path"
    if code == errno.ENOENT:
        return f"no such file or directory{context}:{where}; check the path"
    if code == errno.EEXIST:
        return f"already exists{context}:{where}; remove it or choose another path"
    text = (e.strerror or str(e)).lower()
    return f"{text}{context}:{where}" if where else f"{text}{context}"


# How libraries that do their own I/O (safetensors, tokenizers: Rust; torch.save: C++) report a failed write.
FOREIGN_DISK_FULL = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
FOREIGN_WRITE_FAILURES = (*FOREIGN_DISK_FULL, "Read-only file system", "os error 30", "Permission denied (os error 13)",
                          "PytorchStreamWriter", "file write failed")


def is_write_failure(e: BaseException) -> bool:
    """A failed file write: an OSError of the user's kind, or a library's own report of one (safetensors raises
    its SafetensorError, torch.save a RuntimeError from its C++ writer, e.g. on a full disk)."""
    if isinstance(e, OSError):
        return e.errno in USER_ERRNOS
    if not isinstance(e, Exception):
        return False
    text = str(e)
    return (any(s in text for s in FOREIGN_WRITE_FAILURES)
            or ("inline_container.cc" in text and "unexpected pos" in text))


def describe_write_failure(e: BaseException, directory: Path | None = None) -> str:
    """describe_os_error, or for a library's report: the directory, its free space, and what to do."""
    if isinstance(e, OSError):
        return describe_os_error(e, f"in {directory}" if directory is not None and e.filename is None else "")
    text = str(e).strip()
    free = free_bytes(directory) if directory is not None else None
    where = f" in {directory}" if directory is not None else ""
    if any(s in text for s in FOREIGN_DISK_FULL) or (free is not None and free < 64 << 20):
        room = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
        return (f"no space left on the device writing{where}{room}; free some space (finished files and older "
                f"checkpoints are kept) or choose another directory")
    first = text.splitlines()[0] if text else type(e).__name__
    return f"writing{where} failed ({first[:200]}); is the disk full, read-only or gone?"
