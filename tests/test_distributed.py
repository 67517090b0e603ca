"""Several CPU processes with gloo under torchrun: every parallelism (ddp, fsdp, hsdp) and precision (float32,
emulated float8 delayed and tensorwise) trains what one process with an N-times larger micro-batch trains,
delayed float8 scales are identical on every rank, checkpoints resume across world sizes and modes, and a
failing rank ends the job promptly."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cs336_basics.training.checkpoint import list_checkpoints, load_model_weights
from cs336_basics.config import read_toml, with_overrides
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


# The delayed recipe's layers without the float8 head: the head scales its input by each micro-batch's own amax
# (precision/fp8_head.py), as TorchAO's tensorwise recipe scales every activation, so on two ranks it computes
# with other scales than one process does, by design; "tensorwise" covers that case.
PRECISIONS = {"fp32": (), "delayed": ("--use_fp8", "--set", "fp8.emulate=true", "--set", "fp8.head=false"),
              "tensorwise": ("--use_fp8", "--set", "fp8.emulate=true", "--fp8_recipe", "tensorwise")}
# How close two ranks' losses stay to one process's. float32: rounding only (the ranks' gradients are averaged in
# another order). Delayed float8: the same scales on every rank (amaxes reduced), so step 1 agrees to rounding;
# a rounding-level weight difference then flips a few float8 roundings a step. Tensorwise: each rank scales its
# activations by its own amax, so the numerics differ a little from the start.
AGREE = {"fp32": (2e-4, 2e-4), "delayed": (1e-4, 2e-3), "tensorwise": (5e-3, 1e-2)}  # (step 1 abs, any step rel)


@pytest.fixture(scope="module")
def single(tmp_path_factory, corpus) -> dict[str, dict[int, float]]:
    """One process, micro-batch 4, accumulation 2: the losses each two-rank run (micro-batch 2) must reproduce."""
    out, runs = tmp_path_factory.mktemp("single"), {}
    for precision, flags in PRECISIONS.items():
        proc = run([sys.executable] + train_args(out, corpus, precision, 4, 4, flags + ACCUMULATE))
        assert proc.returncode == 0, why(proc)
        runs[precision] = losses(out / precision)
    return runs


ACCUMULATE = ("--gradient_accumulation_steps", 2)  # two micro-batches a step: DDP reduces only the last one's


@pytest.mark.parametrize("mode, precision", [("ddp", "fp32"), ("fsdp", "fp32"), ("hsdp", "fp32"), ("ddp", "delayed"),
                                             ("fsdp", "delayed"), ("hsdp", "delayed"), ("ddp", "tensorwise"),
                                             ("fsdp", "tensorwise"), ("fsdp+gather_once", "delayed"),
                                             ("hsdp+gather_once", "fp32")])
def test_two_ranks_train_what_one_process_trains_with_a_doubled_micro_batch(tmp_path, corpus, single, mode, precision):
    mode, _, gather_once = mode.partition("+")
    flags = PRECISIONS[precision] + ACCUMULATE + ("--set", f"run.parallelism={mode}")
    if mode == "hsdp":
        flags += ("--set", "run.dp_replicate=2")
    if gather_once:
        flags += ("--set", "run.fsdp_gather_once=true")
    proc = run(TORCHRUN + ["--nproc_per_node", 2, "tests/dist_worker.py", "train"]
               + train_args(tmp_path, corpus, "two", 2, 4, flags)[1:])
    assert proc.returncode == 0, why(proc)
    assert f"parallelism: {mode} over 2 processes" in proc.stdout
    assert ("weights gathered once per optimizer step" in proc.stdout) == bool(gather_once)
    assert read_toml(tmp_path / "two" / "config.toml")["run"]["parallelism"] == mode
    a, b = single[precision], losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    first, rel = AGREE[precision]
    assert b[1] == pytest.approx(a[1], abs=first)
    assert all(b[s] == pytest.approx(a[s], rel=rel) for s in a), (a, b)
    if precision == "delayed":
        assert "FP8 mode enabled" in proc.stdout and "fp8 amax histories identical on 2 ranks" in proc.stdout
        assert ("fp8 all-gather: whole-weight scales" in proc.stdout) == (mode != "ddp")
    if precision == "delayed" and mode == "fsdp":
        # Each weight's float8 all-gathers: with gather_once one a step, plus the calibrating first pass and
        # the evaluation at the end; else each micro-batch's forward and backward gather (the last block's once).
        gathers = float(proc.stdout.split("fp8 all-gathers per weight: ")[1].split()[0])
        assert gathers == 4 + 2 if gather_once else gathers > 4 * 2 + 2
        assert read_toml(tmp_path / "two" / "config.toml")["fp8"]["recipe"] == "delayed"


def test_without_the_amax_reduction_the_ranks_scales_would_differ(tmp_path, corpus):
    """The control of the check above: ranks that keep their own amaxes end with other scales."""
    proc = run(TORCHRUN + ["--nproc_per_node", 2, "tests/dist_worker.py", "train-unreduced"]
               + train_args(tmp_path, corpus, "two", 2, 3, PRECISIONS["delayed"])[1:])
    assert proc.returncode == 0, why(proc)
    assert "fp8 amax histories DIFFER on 2 ranks" in proc.stdout


def test_auto_picks_ddp_when_a_replica_fits_and_fsdp_when_not(monkeypatch):
    from cs336_basics.config import Config
    from cs336_basics.errors import UserError
    from cs336_basics.perf import memory
    from cs336_basics.training.distributed import DistributedContext, choose_parallelism

    ctx, cpu = DistributedContext(0, 2, launched=True), torch.device("cpu")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(memory, "available_memory", lambda device: (64 * 2**30, "available host memory"))
    mode, why_ = choose_parallelism(Config(), cpu, ctx)
    assert mode == "ddp" and "fit in the 32.0 GiB available host memory per process" in why_
    monkeypatch.setattr(memory, "available_memory", lambda device: (2**30, "available host memory"))
    mode, why_ = choose_parallelism(Config(), cpu, ctx)
    assert mode == "fsdp" and "exceeds the 0.5 GiB available host memory" in why_
    hsdp = DistributedContext(0, 4, dp_replicate=2, dp_shard=2, launched=True)
    assert choose_parallelism(Config(), cpu, hsdp)[0] == "hsdp"
    with pytest.raises(UserError, match="sets up hsdp, not ddp"):
        choose_parallelism(with_overrides(Config(), {"run.parallelism": "ddp"}), cpu, hsdp)
    with pytest.raises(UserError, match="run.parallelism hsdp replicates over run.dp_replicate groups"):
        choose_parallelism(with_overrides(Config(), {"run.parallelism": "hsdp"}), cpu, ctx)


def test_a_ddp_checkpoint_resumes_under_fsdp_on_four_ranks_and_back_on_one(tmp_path, corpus):
    """DDP writes the one-process format from rank 0; FSDP loads it sharded over 4 ranks and writes a sharded
    checkpoint, which one process resumes; the delayed float8 history carries over each time."""
    fp8 = PRECISIONS["delayed"]
    assert run(TORCHRUN + ["--nproc_per_node", 2] + train_args(tmp_path, corpus, "run", 2, 4, fp8)).returncode == 0
    saved = list_checkpoints(tmp_path / "run")[-1]
    assert saved.is_dir() and (saved / "model.safetensors").exists() and not (saved / ".metadata").exists()
    fsdp = run(TORCHRUN + ["--nproc_per_node", 4, "train_h100.py", "--resume", tmp_path / "run", "--max_steps", 6,
                           "--set", "run.parallelism=fsdp"])
    assert fsdp.returncode == 0 and "parallelism: fsdp over 4 processes" in fsdp.stdout, why(fsdp)
    assert "resumed from" in fsdp.stdout and "calibrated" not in fsdp.stdout  # the history came with it
    assert (list_checkpoints(tmp_path / "run")[-1] / ".metadata").exists()
    one = run([sys.executable, "train_h100.py", "--resume", tmp_path / "run", "--max_steps", 8])
    assert one.returncode == 0 and "calibrated" not in one.stdout, why(one)
    assert sorted(losses(tmp_path / "run")) == list(range(1, 9))


def test_parallelism_without_torchrun_is_an_error(tmp_path, corpus):
    proc = run([sys.executable] + train_args(tmp_path, corpus, "one", 2, 2, ("--set", "run.parallelism=ddp")))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: run.parallelism ddp splits a run over processes: launch with torchrun")


@pytest.mark.parametrize("parallelism", [None, "ddp"])
def test_fsdp_gather_once_without_sharding_is_an_error(parallelism):
    from cs336_basics.config import Config
    from cs336_basics.errors import UserError
    from cs336_basics.training.prepare import resolve_config

    config = with_overrides(Config(), {"run.fsdp_gather_once": True})
    with pytest.raises(UserError, match="run.fsdp_gather_once applies to sharded runs"):
        resolve_config(config, torch.device("cpu"), parallelism, frozenset({"run.fsdp_gather_once"}))
    assert resolve_config(config, torch.device("cpu"), "fsdp", frozenset({"run.fsdp_gather_once"})).run.fsdp_gather_once


def test_save_on_two_ranks_resume_on_one_and_four(tmp_path, corpus):
    fsdp = ("--set", "run.parallelism=fsdp")
    assert run(TORCHRUN + ["--nproc_per_node", 2] + train_args(tmp_path, corpus, "two", 2, extra=fsdp)).returncode == 0
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
