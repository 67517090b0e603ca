"""Checkpoints: atomic writes (temp name, then rename), the last K kept, clear errors on bad files.

A one-process run writes `step_NNNNNNN.pt`, one file. A run of several processes writes `step_NNNNNNN/`,
a torch.distributed.checkpoint directory of shards plus `meta.pt` (see distributed.save_sharded), which
loads into any number of processes. Both carry the model config, step, sampler and RNG state.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from cs336_basics.errors import UserError

_NAME = re.compile(r"^step_(\d+)(\.pt)?$")


def checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def list_checkpoints(out_dir: Path) -> list[Path]:
    d = checkpoint_dir(out_dir)
    found = [p for p in d.iterdir() if _NAME.match(p.name)] if d.is_dir() else []
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def save_checkpoint(out_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    d = checkpoint_dir(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:07d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the old checkpoints and at worst a stray .tmp
    prune_checkpoints(out_dir, keep)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint file, or the newest checkpoint of a run directory. For a sharded checkpoint the
    returned dict holds its metadata and `sharded_path`; the weights are loaded by the Trainer."""
    path = Path(path)
    if path.is_dir() and not (path / "meta.pt").exists():
        found = list_checkpoints(path)
        if not found:
            raise UserError(f"no checkpoint in {path} (expected {checkpoint_dir(path)}/step_*); check the run directory")
        path = found[-1]
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass a run directory or a step_* checkpoint")
    sharded = path.is_dir()
    try:
        state = torch.load(path / "meta.pt" if sharded else path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); delete it to fall back to the previous one"
        ) from None
    if not isinstance(state, dict) or "model_config" not in state or (not sharded and "model" not in state):
        raise UserError(f"{path} is not a cs336_basics checkpoint (no model state or config inside)")
    state["path"] = str(path)
    state["run_dir"] = str(path.parent.parent)  # <run>/checkpoints/step_N
    if sharded:
        state["sharded_path"] = str(path)
    return state


def load_model_weights(path: Path) -> dict[str, Any]:
    """Model config, step and a plain single-file state dict from either kind of checkpoint (for generate)."""
    state = load_checkpoint(path)
    if "sharded_path" in state:
        from cs336_basics.model.transformer import ModelConfig, Transformer
        from cs336_basics.training.distributed import load_sharded

        model = Transformer(ModelConfig(**state["model_config"]))
        load_sharded(Path(state["sharded_path"]), model, optimizer=None)
        state["model"] = model.state_dict()
    return state


def config_from_checkpoint(state: dict[str, Any]):  # -> Config
    """The config a run trained with: its run directory's config.toml, else the one inside the checkpoint, else
    (checkpoints written before the config existed) rebuilt from their model and training settings."""
    from cs336_basics.config import Config, Fp8Config, TrainConfig, read_toml

    saved = Path(state.get("run_dir", "")) / "config.toml"
    if "run_dir" in state and saved.is_file():
        return Config.from_dict(read_toml(saved), where=f"{saved}: ")
    if "config" in state:
        return Config.from_dict(state["config"])
    train_fields = {f for f in TrainConfig.__dataclass_fields__}
    train = {k: v for k, v in state.get("train_config", {}).items() if k in train_fields and v is not None}
    train.setdefault("residual_dtype", "fp32")  # checkpoints from before that setting trained with float32
    fp8 = {"enabled": bool(state.get("fp8"))}
    for old, new in (("fp8_recipe", "recipe"), ("fp8_head", "head"), ("fp8_fused_swiglu", "fused_swiglu"),
                     ("fp8_kernel_casts", "kernel_casts"), ("fp8_fast_accum", "fast_accum"), ("fp8_merge_w13", "merge_w13")):
        if state.get(old) is not None:
            fp8[new] = state[old]
    for old, new in (("fp8_weight_cache", "weight_cache"), ("fp8_margin", "margin")):
        if state.get("train_config", {}).get(old) is not None:
            fp8[new] = state["train_config"][old]
    if not fp8["enabled"]:
        fp8 = {"enabled": False}
    data = {"train_data": list(state.get("train_data") or [])}
    if state.get("val_data"):
        data["val_data"] = state["val_data"]
    return Config.from_dict({"model": state["model_config"], "train": train, "fp8": fp8, "data": data})
