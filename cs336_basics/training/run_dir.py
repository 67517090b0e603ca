"""The run directory's life, in an order in which nothing is lost by a bad flag, a bad file or a signal:

1. `plan_run_dir` checks, changing nothing: the directory can be written (not a file, not read-only, not under
   /proc), it holds no other run unless --overwrite, --overwrite would not delete what this run reads, there is
   room for a checkpoint; `check_inputs` checks the data files, the tokenizer and the cache directory;
2. `RunLock` (training/run_lock.py) claims the directory for this run alone;
3. the data are prepared into the cache, and the tokenizer into a staging directory (`.new-run/`) when an old
   run (or files an earlier run left) are still in the directory;
4. once the new run can start, `replace_old_run` moves the old run aside (`.old-run/`), moves the staged files
   in and only then deletes the old run.
A failure before step 4 leaves the old run as it was, and removes the staging directory and the temporary files
of interrupted writes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cs336_basics.config import Config
from cs336_basics.data.sources import check_source, file_format
from cs336_basics.errors import UserError
from cs336_basics.files import check_writable_dir, free_bytes, remove_quietly, remove_stray_temps
from cs336_basics.perf.memory import parameter_count
from cs336_basics.training.run_lock import LOCK_NAME

CONFIG_FILE = "config.toml"
STAGING = ".new-run"
ASIDE = ".old-run"
# What a run writes into its directory; a new run replaces these when an earlier run left them without a config.
RUN_FILES = frozenset({CONFIG_FILE, "run.json", "summary.json", "metrics.jsonl", "loss.png", "tokenizer.json",
                       "checkpoints", "tensorboard", "wandb"})


@dataclass
class RunDirPlan:
    out_dir: Path
    resume: bool = False
    overwrite: bool = False  # an old run is in out_dir and is replaced (everything in the directory but the lock)
    stage: bool = False  # the new run's first files go to out_dir/.new-run until the old ones are replaced
    created: bool = False  # out_dir did not exist before this run
    started: bool = False  # replace_old_run has run: the directory is the new run's

    @property
    def data_dir(self) -> Path:
        """Where prepare_data saves the run's tokenizer."""
        return self.out_dir / STAGING if self.stage else self.out_dir


def holds_run(out_dir: Path) -> bool:
    checkpoints = out_dir / "checkpoints"
    return ((out_dir / CONFIG_FILE).exists() or (out_dir / "run.json").exists()
            or (checkpoints.is_dir() and any(p.name.startswith("step_") for p in checkpoints.iterdir())))


def checkpoint_bytes(config: Config) -> int:
    """About the size of one one-process checkpoint: fp32 weights and AdamW's two moments."""
    return 12 * parameter_count(config)


def _precious(out_dir: Path) -> str | None:
    """Why deleting everything in `out_dir` would be a disaster, if it would."""
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "the current directory" if resolved == cwd else f"a parent of the current directory ({cwd})"
    if resolved == Path.home().resolve() or resolved == Path(resolved.anchor):
        return "your home directory" if resolved != Path(resolved.anchor) else "the file system's root"
    return None


def plan_run_dir(out_dir: Path, overwrite: bool, resume: bool) -> RunDirPlan:
    """Check the run directory, changing nothing (see the module's docstring)."""
    what = "run directory" if resume else "--out_dir"
    check_writable_dir(out_dir, what, "choose another --out_dir" if not resume else "move the run somewhere writable")
    if resume:
        return RunDirPlan(out_dir, resume=True)
    existed = out_dir.exists()
    has_run = existed and holds_run(out_dir)
    if has_run and not overwrite:
        raise UserError(f"{out_dir} holds another run; pass --resume {out_dir} to continue it, --overwrite to "
                        f"replace it, or another --out_dir")
    if has_run and (why := _precious(out_dir)):
        raise UserError(f"--overwrite replaces everything in {out_dir}, which is {why}; train into a directory "
                        f"of its own (--out_dir runs/NAME)")
    leftovers = existed and any((out_dir / name).exists() for name in RUN_FILES)
    return RunDirPlan(out_dir, overwrite=has_run, stage=has_run or leftovers, created=not existed)


def check_checkpoint_space(config: Config, plan: RunDirPlan) -> None:
    """A new run's directory has room for one checkpoint (an overwritten run frees its own; a resumed one has
    written checkpoints before). Checked after the memory estimate, so a model too large for memory is refused
    as such whatever the disk holds."""
    if plan.resume or plan.overwrite:
        return
    free = free_bytes(plan.out_dir)
    need = checkpoint_bytes(config)
    if free is not None and free < need:
        raise UserError(f"{plan.out_dir} has {free / 2**20:,.1f} MiB free, and one checkpoint of this model takes "
                        f"about {need / 2**20:,.1f} MiB; free some space or choose another --out_dir")


def _inside(path: Path, directory: Path) -> bool:
    with contextlib.suppress(OSError):
        path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents


def check_inputs(config: Config, plan: RunDirPlan) -> None:
    """The data files, the tokenizer and the cache directory, before the run directory is touched."""
    from cs336_basics.data.tokenizer import load_tokenizer

    data = config.data
    files = [path for name in data.train_data for path in check_source(name, "data file", data.text_field)]
    if data.val_data:
        check_source(data.val_data, "validation file", data.text_field)
    # every token covers at least one byte of text, so a text file bounds its tokens (compressed or columnar
    # files do not: they are checked once encoded)
    if files and all(file_format(path) in ("text", "jsonl") for path in files):
        most = sum(path.stat().st_size for path in files) + len(files) - 1
        if most < config.model.context_length + 1:
            raise UserError(f"the training data has at most {most:,} tokens (one a byte), fewer than one context window "
                            f"plus one ({config.model.context_length + 1}); give more text or a smaller --context_length")
    if data.tokenizer:
        tokenizer_path = Path(data.tokenizer)
        if tokenizer_path.is_dir():
            raise UserError(f"--tokenizer {tokenizer_path} is a directory; pass its tokenizer.json")
        if not tokenizer_path.exists():
            raise UserError(f"--tokenizer {tokenizer_path} does not exist; check the path, or omit --tokenizer to "
                            f"train one on the data")
        size = load_tokenizer(tokenizer_path).get_vocab_size()
        if size > config.model.vocab_size:
            raise UserError(f"the tokenizer has {size} tokens but the model's vocab_size is {config.model.vocab_size}; "
                            f"raise --vocab_size or use a smaller tokenizer")
    check_writable_dir(Path(data.cache_dir), "data.cache_dir", "set --set data.cache_dir=DIR to a writable directory")
    if plan.overwrite:
        inputs = [("the training data", Path(p)) for p in data.train_data]
        inputs += [("the validation data", Path(data.val_data))] if data.val_data else []
        inputs += [("the tokenizer", Path(data.tokenizer))] if data.tokenizer else []
        inputs += [("the data cache (data.cache_dir)", Path(data.cache_dir))]
        for what, path in inputs:
            if _inside(path, plan.out_dir):
                raise UserError(f"--overwrite would delete {path} ({what} of this run), which is inside "
                                f"{plan.out_dir}; move it out or choose another --out_dir")


def clear_leftovers(out_dir: Path) -> None:
    """With the lock held: what a crashed run left (staging, a half-replaced old run, temporary files)."""
    for name in (STAGING, ASIDE):
        remove_quietly(out_dir / name)
    remove_stray_temps(out_dir, out_dir / "checkpoints")


def replace_old_run(plan: RunDirPlan) -> None:
    """The new run's staged files in place of the old run (see the module's docstring). With --overwrite
    everything in the directory but the lock goes; otherwise only files a run writes (RUN_FILES)."""
    if not plan.stage:
        plan.started = True
        return
    out_dir, staging, aside = plan.out_dir, plan.out_dir / STAGING, plan.out_dir / ASIDE
    aside.mkdir()
    moved: list[str] = []
    try:
        for entry in list(out_dir.iterdir()):
            if entry.name in (LOCK_NAME, STAGING, ASIDE):
                continue
            if plan.overwrite or entry.name in RUN_FILES:
                os.rename(entry, aside / entry.name)
                moved.append(entry.name)
        if staging.is_dir():
            for entry in list(staging.iterdir()):
                os.rename(entry, out_dir / entry.name)
            staging.rmdir()
    except BaseException:  # put the old run back as it was
        for name in moved:
            with contextlib.suppress(OSError):
                if (out_dir / name).exists():
                    remove_quietly(out_dir / name)
                os.rename(aside / name, out_dir / name)
        with contextlib.suppress(OSError):
            aside.rmdir()
        raise
    plan.started = True
    shutil.rmtree(aside)


def clean_up_failed_start(plan: RunDirPlan) -> None:
    """A run that failed before it started: its staging directory goes, and the directory itself if this run
    created it and nothing else is in it."""
    remove_quietly(plan.out_dir / STAGING)
    remove_stray_temps(plan.out_dir, plan.out_dir / "checkpoints")
    if plan.created:  # what this run wrote into the directory it made goes, then the directory if empty
        with contextlib.suppress(OSError):
            for entry in list(plan.out_dir.iterdir()):
                if entry.name in RUN_FILES or entry.name == LOCK_NAME:
                    remove_quietly(entry)
            plan.out_dir.rmdir()
