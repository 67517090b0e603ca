"""What a diverged run says: the step and the loss, the setting that most likely caused it (not always the
learning rate), and where to continue from: the newest checkpoint that exists, or that there is none."""

from __future__ import annotations

import math
from pathlib import Path

from cs336_basics.config import TrainConfig


def likely_cause(cfg: TrainConfig) -> str:
    decay = cfg.lr * cfg.weight_decay
    if decay >= 1:
        return (f"train.weight_decay {cfg.weight_decay} x lr {cfg.lr} = {decay:.3g} >= 1: AdamW's decay multiplies the "
                f"weights by 1 - lr x weight_decay every step, which zeroes or flips them; lower train.weight_decay "
                f"(e.g. 0.1)")
    fix = f"lower --lr (now {cfg.lr}) or raise --warmup_steps (now {cfg.warmup_steps})"
    if cfg.grad_clip == 0:
        fix += ", or turn gradient clipping back on (train.grad_clip, now 0: off; e.g. 1.0)"
    return fix


def divergence_message(loss: float, step: int, cfg: TrainConfig, out_dir: Path, grad_norm: float | None = None) -> str:
    from cs336_basics.training.checkpoint import list_checkpoints

    norm = ""
    if grad_norm is not None:
        norm = f" the gradient norm was {grad_norm:.4g};" if math.isfinite(grad_norm) else f" the gradient norm was {grad_norm};"
    try:
        saved = list_checkpoints(out_dir)
    except OSError:
        saved = []
    where = (f"the last good checkpoint is {saved[-1]}: continue from it with --resume {out_dir} and that change"
             if saved else "no checkpoint was written before it")
    return f"loss became {loss} at step {step};{norm} {likely_cause(cfg)}; {where}"
