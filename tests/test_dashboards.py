"""run.dashboards: TensorBoard and W&B (offline without a key) get metrics.jsonl's records by step; a missing
package is a one-line error before the run directory exists; a resumed run continues its W&B run."""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import ROOT, losses, make_config, one_line_error
from cs336_basics.training.checkpoint import step_path
from cs336_basics.training.dashboards import PACKAGES, WANDB_ID_FILE, Dashboards

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")


@pytest.fixture
def wandb_home(tmp_path: Path, monkeypatch) -> Path:
    """No W&B key anywhere (no WANDB_API_KEY, a HOME without ~/.netrc), no WANDB_MODE: the product picks offline
    itself. Every directory wandb writes to besides the run's is under tmp_path."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    return home


def tensorboard_scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars(tag)]
    assert len(steps) == len(set(steps)), f"{tag}: a step logged twice: {steps}"
    return {e.step: e.value for e in events.Scalars(tag)}


def wandb_runs(run_dir: Path) -> list[Path]:
    """The offline W&B runs in run_dir, oldest first."""
    return sorted((run_dir / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)


def test_a_run_logs_to_tensorboard_and_offline_wandb_and_a_resumed_run_continues_both(tmp_path, tiny_cli,
                                                                                        wandb_home):
    train, base = tiny_cli
    run = tmp_path / "run"
    common = [*base, "--set", "train.log_interval=1", "--set", "train.checkpoint_interval=2"]
    assert train([*common, "--out_dir", run, "--max_steps", 4, "--dashboard", "tensorboard,wandb"]) == 0
    assert (run / "metrics.jsonl").exists() and (run / "loss.png").exists()
    assert tensorboard_scalars(run, "loss") == pytest.approx(losses(run), abs=1e-5)
    assert sorted(tensorboard_scalars(run, "val_loss")) == [2, 4]
    run_id = (run / WANDB_ID_FILE).read_text().strip()
    (first,) = wandb_runs(run)
    assert first.name.endswith(f"-{run_id}") and (first / f"run-{run_id}.wandb").stat().st_size > 0

    # a run killed after logging step 4 but before its checkpoint: the resumed run logs steps 3 and 4 again
    shutil.rmtree(step_path(run, 4))
    assert train(["--resume", run, "--max_steps", 6]) == 0
    assert sorted(losses(run)) == [1, 2, 3, 4, 5, 6]
    assert tensorboard_scalars(run, "loss") == pytest.approx(losses(run), abs=1e-5)
    assert (run / WANDB_ID_FILE).read_text().strip() == run_id  # the same W&B run, continued
    runs = wandb_runs(run)
    assert len(runs) == 2 and all(f"-{run_id}" in p.name for p in runs)
    assert not [p for p in wandb_home.rglob("*") if "wandb" in p.name], "wandb wrote into HOME"


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_missing_dashboard_package_is_a_one_line_error_before_the_run_directory_exists(
        name, tmp_path, tiny_cli, monkeypatch, capsys):
    train, base = tiny_cli
    monkeypatch.setitem(sys.modules, name, None)  # `import NAME` fails as it would without the package
    rc = train([*base, "--out_dir", tmp_path / "run", "--max_steps", 2, "--set", f"run.dashboards={name}"])
    one_line_error(capsys, rc, f"pip install {name}==")
    assert not (tmp_path / "run").exists()


def test_wandb_is_offline_without_a_key_online_with_one_and_a_users_wandb_mode_is_kept(tmp_path, monkeypatch):
    import wandb

    modes: list[str | None] = []
    ids: set[str] = set()

    class FakeRun:
        def define_metric(self, *args, **kwargs) -> None:
            pass

    monkeypatch.setattr(wandb, "init", lambda **kwargs: modes.append(kwargs["mode"]) or ids.add(kwargs["id"]) or FakeRun())
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for has_key in (False, True):
        monkeypatch.setattr(wandb, "login", lambda prompt, verify, has_key=has_key: has_key)
        Dashboards(("wandb",), make_config(), tmp_path, "run")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    Dashboards(("wandb",), make_config(), tmp_path, "run")
    assert modes == ["offline", None, None]
    assert ids == {(tmp_path / WANDB_ID_FILE).read_text().strip()}  # made once, then reused


def test_no_dashboards_write_nothing(tmp_path):
    with Dashboards((), make_config(), tmp_path, "run") as dashboards:
        dashboards.log({"step": 1, "loss": 2.0})
    assert not list(tmp_path.iterdir())


def test_the_install_hints_pin_the_locked_versions_inside_the_extras_range():
    lock = dict(line.split("==") for line in (ROOT / "requirements-dev.lock").read_text().splitlines()
                if line and not line.startswith("#"))
    with open(ROOT / "pyproject.toml", "rb") as f:
        extra = {Requirement(r).name: Requirement(r) for r in tomllib.load(f)["project"]["optional-dependencies"]["dashboards"]}
    for name, pin in PACKAGES.items():
        assert pin == f"{name}=={lock[name]}"
        assert extra[name].specifier.contains(lock[name])
