"""Several CPU processes with gloo under torchrun: FSDP2 equivalence, FP8 (emulated) under FSDP2,
sharded checkpoints across world sizes, and prompt failure."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cs336_basics.training.checkpoint import list_checkpoints, load_model_weights
from cs336_basics.config import read_toml
from conftest import ROOT, TEST_FLAGS, losses

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}  # stacks on an abort


def run(cmd: list, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def why(proc: subprocess.CompletedProcess) -> str:
    """What a failed torchrun's workers said (torchrun's own summary comes last and says little): error lines,
    and the Python stacks that faulthandler prints on an abort."""
    lines, keep, out = proc.stderr.splitlines(), 0, []
    for ln in lines:
        if "Fatal Python error" in ln:
            keep = 25
        if keep or any(k in ln for k in ("Error", "error:", "terminate", "what()")):
            out.append(ln)
            keep = max(keep - 1, 0)
    return "\n".join(out)[-4000:]


def train_args(tmp_path: Path, corpus: Path, out: str, batch: int, steps: int = 6, extra: tuple = ()) -> list:
    return ["train_h100.py", *TEST_FLAGS, "--train_data", corpus, "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--out_dir", tmp_path / out, "--max_steps", steps, "--batch_size", batch, "--warmup_steps", 2,
            "--eval_interval", steps, "--set", "train.eval_steps=2", "--set", f"train.checkpoint_interval={steps}",
            "--set", "train.log_interval=1", "--set", "run.sample_tokens=0", "--lr", 3e-3, *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox {i % 17} jumps over {i % 5} lazy dogs.\n" for i in range(3000)))
    return path


def test_fsdp2_on_two_ranks_matches_one_process_on_the_same_global_batch(tmp_path, corpus):
    single = run([sys.executable] + train_args(tmp_path, corpus, "single", batch=4))
    assert single.returncode == 0, why(single)
    double = run(TORCHRUN + ["--nproc_per_node", 2] + train_args(tmp_path, corpus, "fsdp", batch=2))
    assert double.returncode == 0, why(double)
    a, b = losses(tmp_path / "single"), losses(tmp_path / "fsdp")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=2e-4), step
    assert "x 2 ranks" in double.stdout and double.stdout.count("Configuration") == 1  # rank 0 prints alone


def test_emulated_fp8_under_fsdp2(tmp_path, corpus):
    """TorchAO's tensorwise recipe in both (auto resolves to it under torchrun: the delayed recipe runs in one
    process); its run directory records the recipe that ran."""
    fp8 = ("--use_fp8", "--set", "fp8.emulate=true")
    single = run([sys.executable] + train_args(tmp_path, corpus, "single", 4, 8, fp8 + ("--fp8_recipe", "tensorwise")))
    double = run(TORCHRUN + ["--nproc_per_node", 2] + train_args(tmp_path, corpus, "fsdp", 2, 8, fp8))
    assert single.returncode == 0 and double.returncode == 0, why(double)
    assert "TorchAO FP8 mode enabled" in double.stdout
    assert read_toml(tmp_path / "fsdp" / "config.toml")["fp8"]["recipe"] == "tensorwise"
    a, b = losses(tmp_path / "single"), losses(tmp_path / "fsdp")
    assert b[8] < b[1] - 0.3
    # per-rank activation scales differ from one process's, so agreement is close but not exact
    assert all(abs(a[s] - b[s]) / a[s] < 0.01 for s in a)


def test_save_on_two_ranks_resume_on_one_and_four(tmp_path, corpus):
    assert run(TORCHRUN + ["--nproc_per_node", 2] + train_args(tmp_path, corpus, "two", 2)).returncode == 0
    saved = list_checkpoints(tmp_path / "two")[-1]
    assert saved.is_dir() and (saved / "meta.json").exists() and (saved / ".metadata").exists()
    on_one = load_model_weights(tmp_path / "two")["model"]  # one process, no process group

    gathered = tmp_path / "four.pt"
    four = run(TORCHRUN + ["--nproc_per_node", 4, "tests/dist_worker.py", "gather", tmp_path / "two", gathered])
    assert four.returncode == 0, why(four)
    on_four = torch.load(gathered, weights_only=True)
    assert on_one.keys() == on_four.keys()
    for name in on_one:
        torch.testing.assert_close(on_four[name], on_one[name], rtol=0, atol=0)

    exported = tmp_path / "plain.safetensors"
    assert run([sys.executable, "generate.py", tmp_path / "two", "--export", exported]).returncode == 0
    plain = load_model_weights(exported)["model"]
    assert all(torch.equal(plain[k], on_one[k]) for k in on_one)

    # and training continues from it on one process and on four, with the run's own settings (config.toml)
    resumed_one = run([sys.executable, "train_h100.py", "--resume", tmp_path / "two", "--max_steps", 8])
    assert resumed_one.returncode == 0 and "resumed from" in resumed_one.stdout, why(resumed_one)
    assert sorted(losses(tmp_path / "two")) == list(range(1, 9))
    resumed_four = run(TORCHRUN + ["--nproc_per_node", 4, "train_h100.py", "--resume", tmp_path / "two",
                                   "--max_steps", 10])
    assert resumed_four.returncode == 0, why(resumed_four)
    assert max(losses(tmp_path / "two")) == 10
    assert "x 4 ranks" in resumed_four.stdout and "batch_size = 2\n" in (tmp_path / "two" / "config.toml").read_text()


def test_a_failing_rank_ends_the_job_promptly_with_its_error():
    start = time.monotonic()
    proc = run(TORCHRUN + ["--nproc_per_node", 2, "tests/dist_worker.py", "fail"], timeout=120)
    assert proc.returncode != 0
    assert "rank 1 failed on purpose" in proc.stdout + proc.stderr
    assert time.monotonic() - start < 60
