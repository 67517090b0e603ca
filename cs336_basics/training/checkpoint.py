"""Checkpoints: atomic writes (temp file, then rename), the last K kept, clear errors on bad files."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from cs336_basics.errors import UserError

_NAME = re.compile(r"step_(\d+)\.pt$")


def checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def list_checkpoints(out_dir: Path) -> list[Path]:
    d = checkpoint_dir(out_dir)
    found = [p for p in d.glob("step_*.pt") if _NAME.search(p.name)] if d.is_dir() else []
    return sorted(found, key=lambda p: int(_NAME.search(p.name).group(1)))


def save_checkpoint(out_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    d = checkpoint_dir(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:07d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the old checkpoints and at worst a stray .tmp
    for old in list_checkpoints(out_dir)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint file, or the newest one in a run directory."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise UserError(f"no checkpoint in {path} (expected {checkpoint_dir(path)}/step_*.pt); check the run directory")
        path = found[-1]
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a run directory or a step_*.pt file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); delete it to fall back to the previous one"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise UserError(f"{path} is not a cs336_basics checkpoint (no model state or config inside)")
    state["path"] = str(path)
    return state
