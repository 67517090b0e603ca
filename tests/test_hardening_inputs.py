"""Hardening of the inputs: every bad input is one `error:` line and exit code 2 before anything is touched;
--overwrite replaces an old run only once the new one can start; one run per directory (run.lock); unwritable
paths and full disks are one line with nothing half-written left; values are checked; memory is estimated
before anything is allocated; generate and the benchmark matrix check their flags before any work."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cs336_basics.cli import run_main
from cs336_basics.config import Config, TrainConfig, load_recipe, with_overrides
from cs336_basics.errors import UserError
from cs336_basics.files import atomic_path, check_writable_dir, remove_stray_temps, write_text_atomic
from cs336_basics.model.transformer import Transformer
from cs336_basics.perf import memory
from cs336_basics.training.divergence import divergence_message
from cs336_basics.training.run_lock import LOCK_NAME, RunLock, holder_info
from conftest import ROOT, run_train

CPU_ONLY = not torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------- helpers
def error_line(capsys, rc: int, pattern: str = "") -> str:
    """Exit 2, exactly one 'error: ...' line (the last on stderr; progress bars may precede it), no traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert rc == 2, err
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert pattern in errors[0], (pattern, errors[0])
    assert not any("Traceback" in line for line in err), err
    return errors[0]


def snapshot(directory: Path) -> dict[str, str]:
    """Every file below `directory` with a hash of its content."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def temps_in(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


@pytest.fixture
def old_run(tmp_path, tiny_cli):
    """A finished two-step run in tmp_path/run and (train, base arguments for that directory)."""
    train, base = tiny_cli
    run = tmp_path / "run"
    assert train([*base, "--out_dir", run, "--max_steps", 2]) == 0
    return run, train, [*base, "--out_dir", run, "--max_steps", 2]


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, ro=False) -> a fresh tmpfs directory (unmounted afterwards); skipped where mounting is not
    permitted (not root, or a container without CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(size: str, ro: bool = False) -> Path:
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        options = f"size={size}" + (",ro" if ro else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): needs root and "
                        f"CAP_SYS_ADMIN")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


# ------------------------------------------------------------------ class 7/6/8/9: a table of bad inputs
# Each case: extra training arguments (with {tmp} for the test's directory, {file} for a plain file there),
# and a fragment of the one error line. Everything fails before the run directory is created.
BAD_TRAIN_INPUTS = [
    (["--set", "train.weight_decay=-0.1"], "train.weight_decay must be >= 0"),
    (["--set", "train.weight_decay=nan"], "train.weight_decay must be a finite number"),
    (["--set", "train.grad_clip=nan"], "train.grad_clip must be a finite number"),
    (["--set", "train.grad_clip=-1"], "train.grad_clip must be >= 0"),
    (["--lr", "inf"], "train.lr must be a finite number"),
    (["--lr", "0"], "need 0 < train.lr"),
    (["--set", "train.min_lr=1"], "0 <= train.min_lr <= train.lr"),
    (["--seed", "-1"], "train.seed must be in 0..4294967295"),
    (["--seed", str(2**32)], "train.seed must be in 0..4294967295"),
    (["--warmup_steps", "-3"], "train.warmup_steps must be >= 0"),
    (["--set", "model.norm_eps=0"], "model.norm_eps must be > 0"),
    (["--set", "model.rope_theta=nan"], "model.rope_theta must be a finite number"),
    (["--dim", "-32"], "--dim must be positive"),
    (["--n_heads", "3"], "not divisible by --n_heads"),
    (["--set", "fp8.margin=40", "--use_fp8", "--set", "fp8.emulate=true"], "fp8.margin must be <= 16"),
    (["--set", "run.sample_tokens=5", "--set", "run.prompt="], "run.prompt is empty"),
    (["--set", "run.sample_tokens=-1"], "run.sample_tokens must be >= 0"),
    (["--set", "data.cache_dir="], "data.cache_dir must name a directory"),
    (["--train_data", "{empty}"], "is a directory holding no"),
    (["--train_data", "{tmp}/missing.txt"], "does not exist"),
    (["--train_data", "/dev/null"], "is not a regular file"),
    (["--val_data", "{empty}"], "is a directory holding no"),
    (["--tokenizer", "{tmp}"], "--tokenizer {tmp} is a directory"),
    (["--tokenizer", "{tmp}/missing.json"], "does not exist"),
    (["--tokenizer", "{file}"], "cannot load tokenizer"),
    (["--out_dir", "/proc/cs336-hardening-test"], "is under /proc"),
    (["--out_dir", "{file}"], "is a file, not a directory"),
    (["--out_dir", "{file}/run"], "cannot be created: {file} is a file"),
    (["--set", "data.cache_dir={file}"], "data.cache_dir {file} is a file"),
    (["--set", "data.cache_dir=/proc/cs336-cache"], "is under /proc"),
    (["--context_length", "100000"], "fewer than one context window"),
    (["--vocab_size", "100000000"], "this run needs about"),
    (["--batch_size", "10000000"], "lower --batch_size"),
    (["--device", "meta"], "this project runs on cpu, cuda or cuda:N"),
    (["--device", "cuda:0" if CPU_ONLY else f"cuda:{torch.cuda.device_count()}"], "--device"),
    (["--device", "nonsense"], "is not a device"),
]


@pytest.mark.parametrize("extra, message", BAD_TRAIN_INPUTS, ids=[" ".join(e)[:40] for e, _ in BAD_TRAIN_INPUTS])
def test_a_bad_training_input_is_one_line_and_touches_nothing(tmp_path, tiny_cli, capsys, extra, message):
    train, base = tiny_cli
    (tmp_path / "plain.txt").write_text("not a directory, not a tokenizer\n")
    (tmp_path / "empty").mkdir()
    fill = {"tmp": str(tmp_path), "file": str(tmp_path / "plain.txt"), "empty": str(tmp_path / "empty")}
    extra = [e.format(**fill) for e in extra]
    out = tmp_path / "run"
    argv = [*base, "--out_dir", out, "--max_steps", 2, *extra]
    started = time.monotonic()
    error_line(capsys, train(argv), message.format(**fill))
    assert not out.exists()  # checked before the run directory was made
    assert time.monotonic() - started < 30  # refused up front, not after a tokenizer or a model was built


# ----------------------------------------------------------------------- class 2: destroying before validating
@pytest.mark.parametrize("extra, message", [
    (["--train_data", "{tmp}/corpus_mispelt.txt"], "does not exist"),
    (["--dim", "33"], "not divisible by --n_heads"),
    (["--seed", "-1"], "train.seed must be in"),
    (["--set", "train.weight_decay=-0.1"], "train.weight_decay must be >= 0"),
    (["--tokenizer", "{tmp}/no_tokenizer.json"], "does not exist"),
    (["--vocab_size", "100000000"], "this run needs about"),
    (["--set", "data.cache_dir=/proc/cs336-cache"], "is under /proc"),
    (["--set", "run.sample_tokens=3", "--set", "run.prompt="], "run.prompt is empty"),
    (["--device", "meta"], "this project runs on cpu"),
])
def test_overwrite_with_a_bad_input_leaves_the_old_run_intact(old_run, capsys, extra, message):
    run, train, argv = old_run
    before = snapshot(run)
    capsys.readouterr()
    extra = [e.format(tmp=run.parent) for e in extra]
    error_line(capsys, train([*argv, "--overwrite", *extra]), message)
    assert snapshot(run) == before
    assert not (run / LOCK_NAME).exists()


def test_overwrite_failing_after_the_lock_leaves_the_old_run_and_no_staging(old_run, tmp_path, capsys, monkeypatch):
    """Failures once the directory is claimed (data too short once tokenized; Ctrl-C while the model is built):
    the old run is as it was, and the staging directory and the lock are gone."""
    run, train, argv = old_run
    before = snapshot(run)
    # 3,000 bytes that a BPE tokenizer trained on them compresses to far fewer than 33 tokens
    short = tmp_path / "repetitive.txt"
    short.write_text("a" * 3000)
    capsys.readouterr()
    error_line(capsys, train([*argv, "--overwrite", "--train_data", short]), "fewer than one context window")
    assert snapshot(run) == before
    assert sorted(p.name for p in run.iterdir()) == sorted({p.split("/")[0] for p in before})

    import cs336_basics.cli.train as train_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "prepare_model", interrupted)
    assert train([*argv, "--overwrite"]) == 130
    assert snapshot(run) == before
    assert not (run / ".new-run").exists() and not (run / ".old-run").exists() and not (run / LOCK_NAME).exists()


def test_overwrite_replaces_the_old_run_once_the_new_one_starts(old_run, capsys):
    run, train, argv = old_run
    before = snapshot(run)
    (run / "notes.txt").write_text("the old run's notes")
    assert train([*argv[:-1], 3, "--overwrite", "--vocab_size", 400]) == 0
    after = snapshot(run)
    assert "notes.txt" not in after  # --overwrite replaces everything in the directory
    assert after["tokenizer.json"] != before["tokenizer.json"]  # the new run's own tokenizer, not the old one's
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    assert not any(name.startswith((".new-run", ".old-run", LOCK_NAME)) for name in after)


def test_a_new_run_that_fails_removes_the_directory_it_created(tmp_path, tiny_cli, capsys):
    train, base = tiny_cli
    short = tmp_path / "repetitive.txt"
    short.write_text("a" * 3000)
    out = tmp_path / "fresh" / "run"
    error_line(capsys, train([*base, "--out_dir", out, "--max_steps", 2, "--train_data", short]),
               "fewer than one context window")
    assert not out.exists()


def test_overwrite_refuses_to_delete_the_current_directory_or_the_runs_inputs(old_run, capsys, monkeypatch, tmp_path):
    run, train, argv = old_run
    before = snapshot(run)
    inside = run / "corpus_inside.txt"
    inside.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    before = snapshot(run)
    capsys.readouterr()
    error_line(capsys, train([*argv, "--overwrite", "--train_data", inside]), "which is inside")
    monkeypatch.chdir(run)
    error_line(capsys, train([*argv, "--overwrite", "--out_dir", "."]), "which is the current directory")
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- class 4: two runs, one directory
HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from cs336_basics.training.run_lock import RunLock
from cs336_basics.errors import UserError
try:
    RunLock(sys.argv[1]).acquire()
except UserError as e:
    print("refused", e, flush=True)
    sys.exit(0)
print("locked", flush=True)
time.sleep(float(sys.argv[3]))
"""


def hold_lock(directory: Path, seconds: float = 120) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), str(ROOT), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_in_a_live_runs_directory_is_refused_and_a_dead_runs_lock_recovered(old_run, capsys, tmp_path):
    run, train, argv = old_run
    holder = hold_lock(run)
    try:
        lock = json.loads((run / LOCK_NAME).read_text())
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname() and lock["started"]
        before = snapshot(run)
        capsys.readouterr()
        line = error_line(capsys, train([*argv, "--overwrite"]), "is in use by another run")
        assert f"pid {holder.pid}" in line
        error_line(capsys, train(["--resume", run, "--max_steps", 3]), "is in use by another run")
        assert snapshot(run) == before

        empty = tmp_path / "claimed"
        other = hold_lock(empty)
        try:
            error_line(capsys, train([*argv, "--out_dir", empty]), "is in use by another run")
        finally:
            other.kill()
            other.wait()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the lock stays behind, stale
        holder.wait()
    assert (run / LOCK_NAME).exists()
    assert train(["--resume", run, "--max_steps", 3]) == 0
    err = capsys.readouterr().err
    assert f"recovered a stale lock in {run} (pid {holder.pid}" in err
    assert not (run / LOCK_NAME).exists()  # released at the end of the run


def test_the_lock_is_released_when_a_run_is_interrupted(old_run, capsys, monkeypatch):
    run, train, argv = old_run
    from cs336_basics.training.trainer import Trainer

    def interrupted(self):
        assert (run / LOCK_NAME).exists()  # held while training
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", interrupted)
    assert train(["--resume", run, "--max_steps", 3]) == 130
    assert not (run / LOCK_NAME).exists()


def test_of_runs_starting_at_once_exactly_one_gets_the_lock(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run"), str(ROOT), "5"],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = [p.stdout.readline().split()[0] for p in procs]
    for p in procs:
        p.kill()
        p.wait()
    assert sorted(outcomes) == ["locked", "refused", "refused", "refused"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("holder, outcome", [
    ({"pid": "dead"}, "recovered"),
    ({"pid": "self", "process_start": "0"}, "recovered"),  # the pid now names another process
    ({"pid": "self", "boot_id": "another-boot"}, "recovered"),  # the host rebooted since
    ({"pid": "self"}, "in use by another run"),
    ({"pid": "dead", "host": "another-host.example"}, "locked by a run on another host"),
    (None, "being claimed by another run right now"),  # an unreadable lock file, just written
    ("old", "recovered"),  # an unreadable lock file a minute old
])
def test_stale_live_remote_and_unreadable_locks(tmp_path, holder, outcome):
    path = tmp_path / LOCK_NAME
    if isinstance(holder, dict):
        info = {**holder_info(), **holder}
        info["pid"] = os.getpid() if holder["pid"] == "self" else _dead_pid()
        path.write_text(json.dumps(info))
    else:
        path.write_text("")
        if holder == "old":
            os.utime(path, (time.time() - 120, time.time() - 120))
    notices: list[str] = []
    lock = RunLock(tmp_path, notice=notices.append)
    if outcome == "recovered":
        lock.acquire()
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert len(notices) == 1 and notices[0].startswith("note: recovered a stale lock")
        lock.release()
        assert not path.exists()
    else:
        with pytest.raises(UserError, match=outcome):
            lock.acquire()
        assert path.exists()  # another's lock is never removed


def test_a_lock_is_released_only_by_its_holder(tmp_path):
    lock = RunLock(tmp_path).acquire()
    with pytest.raises(UserError, match="in use by another run"):
        RunLock(tmp_path).acquire()
    (tmp_path / LOCK_NAME).write_text(json.dumps({**holder_info(), "started": "another"}))  # someone else's now
    lock.release()
    assert (tmp_path / LOCK_NAME).exists()


# ---------------------------------------------------------------------------------- class 6: paths and disk
@pytest.mark.parametrize("code, message", [
    (errno.ENOSPC, "no space left on the device writing /x/metrics.jsonl"),
    (errno.EDQUOT, "no space left on the device"),
    (errno.EACCES, "permission denied: /x/metrics.jsonl"),
    (errno.EROFS, "read-only file system: /x/metrics.jsonl"),
    (errno.ENOTDIR, "not a directory: /x/metrics.jsonl"),
    (errno.EISDIR, "is a directory: /x/metrics.jsonl"),
])
def test_run_main_turns_a_file_system_error_into_one_line(capsys, code, message):
    def failing(argv):
        raise OSError(code, os.strerror(code), "/x/metrics.jsonl")

    error_line(capsys, run_main(failing, []), message)


@pytest.mark.parametrize("exception, message", [
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), "writing failed"),
    (Exception("Error while serializing: I/O error: No space left on device (os error 28)"), "no space left"),
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
])
def test_run_main_knows_the_libraries_reports_of_a_failed_write(capsys, exception, message):
    def failing(argv):
        raise exception

    error_line(capsys, run_main(failing, []), message)


def test_run_main_lets_programming_errors_through():
    def failing(argv):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError):
        run_main(failing, [])
    with pytest.raises(ValueError):
        run_main(lambda argv: int("x"), [])


def test_atomic_writers_remove_their_temporary_file_when_a_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old")
    real = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        real(self, text[:3], *args, **kwargs)  # a part was written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        write_text_atomic(target, "new content")
    monkeypatch.undo()
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "loss.png", keep_suffix=True) as tmp:
            assert tmp.suffix == ".png" and ".tmp" in tmp.name
            tmp.write_bytes(b"")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_stray_temporary_files_are_swept_but_the_only_copy_of_a_checkpoint_is_kept(tmp_path):
    for name in ("config.toml.123.tmp", "loss.tmp.png", "step_0000004.tmp", "step_0000002.old.tmp",
                 "step_0000006.old.tmp", "step_0000006", "keep.txt"):
        (tmp_path / name).mkdir() if name.startswith("step_") else (tmp_path / name).write_text("x")
    remove_stray_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "step_0000002.old.tmp", "step_0000006"]


def test_encoding_onto_a_full_disk_leaves_no_partial_token_file(tmp_path, small_corpus, monkeypatch):
    from cs336_basics.data.corpus import iter_chunks
    from cs336_basics.data.tokenizer import train_tokenizer
    from cs336_basics.data.tokens import encode_files

    import cs336_basics.data.tokens as tokens

    tokenizer = train_tokenizer(iter_chunks(small_corpus), 300)

    def chunks_then_full_disk(path):
        yield from list(iter_chunks(path))[:1]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tokens, "iter_chunks", chunks_then_full_disk)
    with pytest.raises(OSError):
        encode_files([small_corpus], tokenizer, tmp_path / "cache", "train")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_full_disk_while_training_is_one_line_and_keeps_the_older_checkpoint(tmp_path, tiny_cli, tmpfs, capsys):
    """A real full disk: a tmpfs with room for the run's files and one checkpoint, not two."""
    train, base = tiny_cli
    calibrate = tmp_path / "calibrate"
    args = ["--set", "train.checkpoint_interval=2", "--set", "train.keep_checkpoints=3"]
    assert train([*base, "--out_dir", calibrate, "--max_steps", 2, *args]) == 0

    def footprint(paths) -> int:  # tmpfs counts whole pages
        return sum(-(-p.stat().st_size // 4096) * 4096 for p in paths if p.is_file())

    checkpoint = footprint((calibrate / "checkpoints").rglob("*"))
    rest = footprint(p for p in calibrate.rglob("*") if p.name not in ("loss.png", "summary.json"))
    disk = tmpfs(f"{(rest + checkpoint // 2) // 1024}k")
    capsys.readouterr()
    out = disk / "run"
    line = error_line(capsys, train([*base, "--out_dir", out, "--max_steps", 6, *args]), "no space left on the device")
    assert str(out) in line
    from cs336_basics.training.checkpoint import list_checkpoints, load_checkpoint

    assert [int(p.name.split("_")[1].split(".")[0]) for p in list_checkpoints(out)] == [2]  # step 2's, whole
    assert load_checkpoint(out)["step"] == 2
    assert temps_in(out) == [] and not (out / LOCK_NAME).exists()
    assert not (out / "loss.png").exists() or (out / "loss.png").stat().st_size > 0


@pytest.mark.parametrize("what", ["metrics", "plot"])
def test_a_failing_metrics_or_plot_write_is_one_line_and_leaves_no_temporary_file(tmp_path, tiny_cli, capsys,
                                                                                  monkeypatch, what):
    train, base = tiny_cli
    if what == "metrics":
        from cs336_basics.training.metrics import MetricsLog

        real, calls = MetricsLog.write, []

        def write(self, record):
            calls.append(record)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(self, record)

        monkeypatch.setattr(MetricsLog, "write", write)
    else:
        from matplotlib.figure import Figure

        def savefig(self, path, *args, **kwargs):
            Path(path).write_bytes(b"")  # the 0-byte file a full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(Figure, "savefig", savefig)
    out = tmp_path / "run"
    line = error_line(capsys, train([*base, "--out_dir", out, "--max_steps", 4]), "no space left on the device")
    assert str(out) in line
    assert temps_in(out) == [] and not (out / LOCK_NAME).exists()


def test_read_only_directories_are_refused_before_any_work(tmp_path, tiny_cli, tmpfs, capsys):
    train, base = tiny_cli
    ro = tmpfs("1m", ro=True)
    for extra, message in [(["--out_dir", ro / "run"], f"--out_dir {ro / 'run'} (its parent {ro}) is not writable"),
                           (["--out_dir", tmp_path / "run", "--set", f"data.cache_dir={ro / 'cache'}"],
                            "data.cache_dir"),]:
        error_line(capsys, train([*base, "--max_steps", 2, *extra]), message)
    with pytest.raises(UserError, match="read-only file system"):
        check_writable_dir(ro, "--out")
    # a run on a file system that became read-only cannot be resumed: said before anything is loaded
    rw = tmpfs("4m")
    assert train([*base, "--out_dir", rw / "run", "--max_steps", 2]) == 0
    subprocess.run(["mount", "-o", "remount,ro", str(rw)], check=True)
    capsys.readouterr()
    error_line(capsys, train(["--resume", rw / "run", "--max_steps", 3]), "read-only file system")


# ----------------------------------------------------------------------------------------- class 7: values
def test_divergence_names_the_cause_and_only_checkpoints_that_exist(tmp_path):
    cfg = TrainConfig(lr=1e-3, warmup_steps=10)
    line = divergence_message(float("nan"), 7, cfg, tmp_path / "run", float("inf"))
    assert line.startswith("loss became nan at step 7; the gradient norm was inf; lower --lr (now 0.001)")
    assert "no checkpoint was written before it" in line and "checkpoints" not in line
    assert "gradient clipping" in divergence_message(float("nan"), 7, TrainConfig(grad_clip=0), tmp_path, None)
    decay = divergence_message(float("inf"), 3, TrainConfig(lr=1e-2, weight_decay=200.0), tmp_path, 1.0)
    assert "train.weight_decay 200.0 x lr 0.01 = 2 >= 1" in decay and "lower --lr" not in decay
    from cs336_basics.training.checkpoint import checkpoint_dir

    (checkpoint_dir(tmp_path) / "step_0000004").mkdir(parents=True)
    assert f"the last good checkpoint is {checkpoint_dir(tmp_path) / 'step_0000004'}" in divergence_message(
        float("nan"), 7, cfg, tmp_path, 1.0)


def test_a_run_diverging_from_its_weight_decay_is_told_so(tmp_path, tiny_cli, capsys):
    train, base = tiny_cli
    line = error_line(capsys, train([*base, "--out_dir", tmp_path / "run", "--max_steps", 10, "--lr", "0.01",
                                     "--warmup_steps", 0, "--set", "train.weight_decay=1e9"]), "loss became")
    assert "train.weight_decay 1000000000.0 x lr 0.01" in line and "no checkpoint was written before it" in line
    assert not (tmp_path / "run" / LOCK_NAME).exists()


@pytest.mark.parametrize("damage", ["truncate", "extend", "bad meta", "meta of another dtype"])
def test_a_damaged_cached_token_file_is_encoded_again(tmp_path, small_corpus, capsys, damage):
    from cs336_basics.data.corpus import iter_chunks
    from cs336_basics.data.tokenizer import train_tokenizer
    from cs336_basics.data.tokens import encode_files

    tokenizer = train_tokenizer(iter_chunks(small_corpus), 300)
    first = encode_files([small_corpus], tokenizer, tmp_path, "train")
    expected = np.array(first.tokens)
    bin_path, meta_path = first.path, first.path.with_suffix(".json")
    del first
    if damage == "truncate":
        bin_path.write_bytes(bin_path.read_bytes()[:1001])
    elif damage == "extend":
        bin_path.write_bytes(bin_path.read_bytes() + b"\0\0")
    elif damage == "bad meta":
        meta_path.write_text("{not json")
    else:
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "dtype": "uint32"}))
    capsys.readouterr()
    again = encode_files([small_corpus], tokenizer, tmp_path, "train")
    assert "encoding again" in capsys.readouterr().err
    assert np.array_equal(np.array(again.tokens), expected)
    assert bin_path.stat().st_size == expected.size * 2


# ----------------------------------------------------------------------------------------- class 8: memory
def test_the_parameter_count_is_the_models():
    for recipe in ("tiny", "seed", "1b"):
        config = load_recipe(recipe)[0]
        with torch.device("meta"):
            assert memory.parameter_count(config) == Transformer(config.model).num_params()


def test_the_memory_estimate_grows_with_what_takes_memory():
    base = with_overrides(Config(), {"model.vocab_size": 512, "model.context_length": 32, "model.dim": 32,
                                     "model.n_layers": 2, "model.n_heads": 2, "model.intermediate_size": 64})
    est = memory.estimate_training_memory(base, "cpu")
    assert est.state_bytes == 16 * memory.parameter_count(base)
    bigger_batch = memory.estimate_training_memory(with_overrides(base, {"train.batch_size": 64}), "cpu")
    assert bigger_batch.activation_bytes > 3 * est.activation_bytes and bigger_batch.state_bytes == est.state_bytes
    no_ckpt = memory.estimate_training_memory(with_overrides(base, {"train.gradient_checkpointing": False}), "cpu")
    assert no_ckpt.activation_bytes > est.activation_bytes
    sharded = memory.estimate_training_memory(base, "cuda", shards=4)
    assert sharded.state_bytes == 18 * memory.parameter_count(base) // 4
    once = with_overrides(base, {"run.parallelism": "fsdp", "run.fsdp_gather_once": True})  # + whole bf16 weights
    assert memory.estimate_training_memory(once, "cuda", shards=4).state_bytes == (   # and float32 gradients
        sharded.state_bytes + 6 * memory.parameter_count(base))
    seed = memory.estimate_training_memory(load_recipe("seed")[0], "cuda")
    assert 25 * 2**30 < seed.total < 45 * 2**30  # measured peaks on an H100: 22-33 GiB


def test_a_run_that_cannot_fit_is_refused_with_the_estimate_and_the_fix(monkeypatch):
    config = with_overrides(Config(), {"model.vocab_size": 512, "model.context_length": 32, "model.dim": 32,
                                       "model.n_layers": 2, "model.n_heads": 2, "model.intermediate_size": 64})
    monkeypatch.setattr(memory, "available_memory", lambda device: (1 << 20, "available host memory"))
    with pytest.raises(UserError, match=r"this run needs about .* but 1.0 MiB is available host memory; lower "
                                        r"--batch_size") as e:
        memory.check_training_memory(with_overrides(config, {"train.batch_size": 4096}), torch.device("cpu"))
    assert "--set run.check_memory=false" in str(e.value)
    with pytest.raises(UserError, match="use a smaller model"):
        memory.check_training_memory(with_overrides(config, {"model.vocab_size": 10**6, "train.batch_size": 1}),
                                     torch.device("cpu"))
    memory.check_training_memory(with_overrides(config, {"train.batch_size": 4096, "run.check_memory": False}),
                                 torch.device("cpu"))


@pytest.mark.skipif(not CPU_ONLY, reason="the default shape is refused only without a GPU")
def test_no_flags_on_a_cpu_is_refused_with_a_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = error_line(capsys, run_train([]), "no --config and no GPU")
    assert "398M-parameter seed shape" in line and "--config tiny" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data_cache").exists()


# ------------------------------------------------------------------------------------- class 9: generate
BAD_GENERATE = [
    (["--prompt", ""], "--prompt is empty"),
    (["--top_k", "-5"], "--top_k must be >= 1"),
    (["--top_k", "0"], "--top_k must be >= 1"),
    (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["--temperature", "inf"], "--temperature must be a finite number >= 0"),
    (["--top_p", "nan"], "--top_p must be in (0, 1]"),
    (["--top_p", "0"], "--top_p must be in (0, 1]"),
    (["--max_new_tokens", "0"], "must be positive"),
    (["--num_samples", "-1"], "must be positive"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--device", "cuda" if CPU_ONLY else "meta"], "--device"),
    (["--device", "nonsense"], "is not a device"),
    (["--export", "{tmp}"], "is a directory; name the file"),
    (["--export", "/proc/cs336/model.pt"], "is under /proc"),
    (["--export", "{file}/model.pt"], "is a file, not a directory"),
]


@pytest.mark.parametrize("extra, message", BAD_GENERATE, ids=[" ".join(e) for e, _ in BAD_GENERATE])
def test_a_bad_generate_flag_is_one_line_before_the_checkpoint_is_loaded(tmp_path, capsys, extra, message):
    from cs336_basics.cli.generate import main as generate_main

    (tmp_path / "plain.txt").write_text("x")
    extra = [e.format(tmp=tmp_path, file=tmp_path / "plain.txt") for e in extra]
    # the checkpoint does not exist: the flag's error must come first
    error_line(capsys, run_main(generate_main, [str(tmp_path / "no_run"), *extra]), message)


# --------------------------------------------------------------------------- class 10: the benchmark matrix
@pytest.mark.parametrize("extra, message", [
    (["--out", "{file}"], "--out {file} is a file"),
    (["--out", "/proc/cs336-bench"], "is under /proc"),
    (["--modes", ","], "--modes names no mode"),
    (["--modes", "bf16-eager,fp8-sideways-eager"], "must start with one of"),
    (["--timeout", "0"], "--timeout must be at least 1"),
    (["--steps", "-2"], "--steps must be at least 1"),
    (["--vocab_size", "100000000"], "this run needs about"),
    (["--modes", "bf16-eager-ac", "--compare-reference"], "none of the modes has a yardstick counterpart"),
    (["--compare-reference", "MISSING"], "which is missing"),
    (["--inductor", "no_such_option=1"], "torch._inductor.config has no"),
])
def test_the_matrix_checks_what_it_needs_before_the_first_row(tmp_path, capsys, monkeypatch, extra, message):
    from cs336_basics.cli import bench

    (tmp_path / "plain.txt").write_text("x")
    if "MISSING" in extra:
        extra = [e for e in extra if e != "MISSING"]
        monkeypatch.setattr(bench, "REFERENCE_SCRIPT", tmp_path / "benchmarks" / "stock_torchao.py")
    monkeypatch.setattr(bench, "run_child", lambda *a, **k: pytest.fail("a configuration ran"))
    monkeypatch.setattr(bench, "run_reference", lambda *a, **k: pytest.fail("the yardstick ran"))
    extra = [e.format(file=tmp_path / "plain.txt") for e in extra]
    argv = ["--modes", "bf16-eager", "--out", str(tmp_path / "out"), *extra]
    error_line(capsys, run_main(bench.main, argv), message.format(file=tmp_path / "plain.txt"))
    assert not (tmp_path / "out").exists()
