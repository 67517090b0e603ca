"""benchmarks/scaling_model.py (docs/scaling.md's predictions): the bytes each mode sends, by hand, and what the
efficiency comes to where the traffic is negligible or dominant."""

import importlib.util
import subprocess
import sys

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("scaling_model", ROOT / "benchmarks" / "scaling_model.py")
model = importlib.util.module_from_spec(spec)
sys.modules["scaling_model"] = model  # its dataclass looks its module up there
spec.loader.exec_module(model)

P, A, STEP = 1_000_000_000, 4, 0.5  # parameters, micro-batches a step, plain one-GPU step (s)


def test_bytes_per_gpu_per_step_by_hand():
    n = 8
    ddp = model.predict("x", P, A, STEP, "ddp", 1.0, n, False)
    assert ddp.bytes_per_gpu_per_step == pytest.approx(2 * 7 / 8 * 4 * P)  # a float32 all-reduce, ring
    fsdp = model.predict("x", P, A, STEP, "fsdp", 1.0, n, True)
    assert fsdp.bytes_per_gpu_per_step == pytest.approx(A * 7 / 8 * P * (1 + 1 + 4))  # 2 fp8 gathers + an fp32 scatter
    once = model.predict("x", P, A, STEP, "fsdp_gather_once", 1.0, n, False)
    assert once.bytes_per_gpu_per_step == pytest.approx(7 / 8 * P * (2 + 4))  # one bf16 gather, one scatter a step
    assert once.link == "nvlink" and model.predict("x", P, A, STEP, "ddp", 1.0, 64, False).link == "ib"


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "fsdp_gather_once"])
def test_a_tiny_model_keeps_the_measured_one_gpu_factor(mode):
    """With a few bytes to move, the efficiency is 1 / the mode's measured factor (less two small latencies)."""
    row = model.predict("x", 1000, A, STEP, mode, 1.25, 2, True)
    assert row.efficiency == pytest.approx(1 / 1.25, rel=1e-3)


def test_traffic_longer_than_the_compute_is_exposed():
    """Across nodes, a huge model on a tiny step is bound by the link: the step is at least the bytes' time."""
    row = model.predict("x", 10 * P, A, 0.01, "ddp", 1.0, 64, False)
    assert row.step_seconds >= row.comm_seconds > 0.01 and row.efficiency < 0.05


def test_the_command_prints_a_row_for_every_mode_and_size(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/scaling_model.py", "--config", "seed", "--step_seconds", "0.55",
                          "--gpus", "2,64", "--json", tmp_path / "rows.json"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 2 * 5  # ddp, fsdp and gather_once (bf16 and float8 all-gathers for the last two)
    assert (tmp_path / "rows.json").exists()
