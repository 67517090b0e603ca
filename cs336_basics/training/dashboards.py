"""Optional dashboards (run.dashboards): the metrics records of metrics.jsonl also go to TensorBoard and/or
Weights & Biases, by step. metrics.jsonl and loss.png stay the run's own record; a dashboard is a view of it.

TensorBoard writes event files into <run dir>/tensorboard/ (`tensorboard --logdir <run dir>`). W&B logs into
<run dir>/wandb/, online where a W&B key is configured (WANDB_API_KEY or `wandb login`), offline otherwise
(`wandb sync` uploads such a run later), so a run never prompts for a key and never needs the network; a
WANDB_MODE the user set is left to wandb. A resumed run continues the same W&B run: its id is kept in the run
directory.
"""

from __future__ import annotations

import importlib
import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import Any

from cs336_basics.config import Config
from cs336_basics.errors import UserError
from cs336_basics.files import write_text_atomic

# The tested versions (requirements-dev.lock pins the same; tests/test_dashboards.py checks that they agree).
PACKAGES = {"tensorboard": "tensorboard==2.21.0", "wandb": "wandb==0.31.0"}
WANDB_ID_FILE = Path("wandb") / "run_id"


def check_dashboards(names: tuple[str, ...]) -> None:
    """Each dashboard's package can be imported: checked before the run directory is touched."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UserError(f"run.dashboards {name} needs the {name} package ({e}): pip install {PACKAGES[name]}, "
                            "or drop it from run.dashboards") from None


class Dashboards:
    """Logs every metrics record's numbers by step to the dashboards named (none on ranks other than 0). A
    context manager: leaving it flushes what was logged and ends the W&B run, as failed after an exception."""

    def __init__(self, names: tuple[str, ...], config: Config, out_dir: Path, run_name: str) -> None:
        self.out_dir = out_dir
        self._tensorboard = "tensorboard" in names
        self._writer: Any = None  # SummaryWriter, made at the first record (see log)
        self._wandb_run: Any = None
        if "wandb" in names:
            self._wandb_run = _start_wandb(config, out_dir, run_name)

    def log(self, record: dict[str, Any]) -> None:
        step = record["step"]
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                # The first record's step is where this process starts logging: on resume, purge_step hides the
                # events an interrupted run logged from there on, which this run logs again.
                self._writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=step)
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)
        if self._wandb_run is not None:
            # x-axis: the "step" metric, not W&B's own counter, which must only grow (a resumed run logs again
            # the steps an interrupted run logged past its checkpoint)
            self._wandb_run.log({"step": step, **scalars})

    def close(self, failed: bool = False) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb_run is not None:
            self._wandb_run.finish(exit_code=1 if failed else 0)
            self._wandb_run = None

    def __enter__(self) -> Dashboards:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close(failed=kind is not None)


def _start_wandb(config: Config, out_dir: Path, run_name: str) -> Any:
    import wandb

    id_file = out_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else ""
    if not run_id:
        run_id = secrets.token_hex(6)  # W&B run ids: letters and digits
        id_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(id_file, run_id + "\n")
    # Without a key wandb would ask for one (or fail where there is no terminal): offline instead.
    # login(prompt=False) looks for a key (the environment, wandb's settings, ~/.netrc) without asking for one.
    mode = None if os.environ.get("WANDB_MODE") or wandb.login(prompt=False, verify=False) else "offline"
    run = wandb.init(project=config.run.wandb_project, dir=out_dir, name=run_name, id=run_id, resume="allow",
                     config=config.to_dict(), mode=mode)
    run.define_metric("*", step_metric="step")
    return run
