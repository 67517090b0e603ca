"""Checkpoint safety and resume state: nothing a run loads can run code (planted pickles in every file a checkpoint,
a sharded checkpoint or an exported model has, through generate, --resume and --export); exported models sample on
their own; a stop at any moment of a step resumes bit for bit (float32 and emulated delayed float8); and the resume
state a crash or a wrong flag can spoil: a part-written metrics line, --max_steps below the checkpoint, other
training data, a stale tokenizer, NaN in summary.json, a corrupt newest checkpoint."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cs336_basics.errors import UserError
from cs336_basics.training import checkpoint as ckpt
from cs336_basics.training.checkpoint import list_checkpoints, load_checkpoint, load_model_weights
from conftest import TEST, fp8_config, losses, make_config, make_trainer, one_line_error, run_train

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # one process writing DCP
MARKER_NAME = "payload-ran"


class Payload:
    """Unpickled, it writes a marker file: what a crafted checkpoint would do with torch.load(weights_only=False)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def generate_main(argv: list) -> int:
    from cs336_basics.cli import run_main
    from cs336_basics.cli.generate import main

    return run_main(main, [str(a) for a in argv])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cli_data) -> Path:
    """A finished 2-step run of the test model (one checkpoint, step 2), copied by each test that damages it."""
    corpus, cache = cli_data
    run = tmp_path_factory.mktemp("trained") / "run"
    from conftest import TEST_FLAGS

    rc = run_train([*TEST_FLAGS, "--train_data", corpus, "--set", f"data.cache_dir={cache}", "--batch_size", 2,
                    "--set", "train.eval_steps=1", "--set", "run.sample_tokens=0", "--out_dir", run, "--max_steps", 2])
    assert rc == 0
    return run


def copy_run(run: Path, tmp_path: Path, name: str = "run") -> Path:
    dest = tmp_path / name
    shutil.copytree(run, dest)
    (dest / "run.lock").unlink(missing_ok=True)
    return dest


def sharded_copy(run: Path, tmp_path: Path, bad_bytes: bool = False) -> Path:
    """The run with its checkpoint rewritten as a torch.distributed.checkpoint directory (one process writes DCP's
    own format: .metadata + shards), as a run of several processes leaves it. bad_bytes: one of the optimizer's
    byte items (a learning rate) is a planted object instead."""
    import torch.distributed.checkpoint as dcp

    from cs336_basics.training.distributed import DistributedContext, save_sharded

    run = copy_run(run, tmp_path, "sharded")
    state = load_checkpoint(run)
    (single,) = list_checkpoints(run)
    shutil.rmtree(single)
    trainer = make_trainer(make_config(TEST, batch_size=2), np.arange(4096) % 500, tmp_path / "scratch")
    trainer.load_state_dict(state)
    meta = {k: v for k, v in state.items() if k not in ("model", "optimizer", "path", "run_dir")}
    files = {"tokenizer.json": (run / "tokenizer.json").read_text()}
    save_sharded(single, trainer.model, trainer.optimizer, meta, DistributedContext(), files)
    if bad_bytes:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(trainer.model, trainer.optimizer)
        optim_state["param_groups"][0]["lr"] = Payload(tmp_path / MARKER_NAME)
        tmp = tmp_path / "dcp"
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
        for f in tmp.iterdir():
            shutil.copy(f, single / f.name)
    return run


def plant(kind: str, run: Path, marker: Path) -> None:
    """A crafted pickle in place of one of the checkpoint's files."""
    (checkpoint,) = list_checkpoints(run)
    payload = Payload(marker)
    if kind == "older-format file":  # what older versions wrote: one pickle file, step_N.pt
        shutil.rmtree(checkpoint)
        torch.save({"model": payload, "model_config": {}, "step": 2}, checkpoint.with_name(checkpoint.name + ".pt"))
    elif kind == "state.pt":
        torch.save({"optimizer": payload, "sampler": {}, "rng": {}, "converters": []}, checkpoint / "state.pt")
    elif kind == "model.safetensors":
        with open(checkpoint / "model.safetensors", "wb") as f:
            pickle.dump(payload, f)
    elif kind == "sharded .metadata":
        with open(checkpoint / ".metadata", "wb") as f:
            pickle.dump(payload, f)
    elif kind == "sharded state.pt":
        torch.save({"sampler": payload, "rng": {}, "converters": []}, checkpoint / "state.pt")
    else:
        raise AssertionError(kind)


PLANTED = {  # where the pickle is planted -> what the one-line error says
    "older-format file": "written by an older version",
    "state.pt": "loading it could run code",
    "model.safetensors": "not a safetensors file",
    "sharded .metadata": "loading it could run code",
    "sharded state.pt": "loading it could run code",
    "sharded byte item": "loading it could run code",
}


STATE_ONLY = ("state.pt", "sharded state.pt", "sharded byte item")  # files that only --resume reads


def test_the_planted_payload_is_real(tmp_path):
    """The payload runs when unpickled the old way (so the tests below would catch a loader that unpickles it)."""
    marker = tmp_path / MARKER_NAME
    torch.save({"model": Payload(marker)}, tmp_path / "step_0000002.pt")
    torch.load(tmp_path / "step_0000002.pt", weights_only=False)
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("kind", list(PLANTED))
def test_a_planted_pickle_never_runs_from_generate_resume_or_export(trained_run, tmp_path, capsys, kind):
    marker = tmp_path / MARKER_NAME
    if kind.startswith("sharded"):
        run = sharded_copy(trained_run, tmp_path, bad_bytes=kind == "sharded byte item")
        assert load_model_weights(run)["step"] == 2  # the sharded copy itself loads, before anything is planted
        if kind != "sharded byte item":
            plant(kind, run, marker)
    else:
        run = copy_run(trained_run, tmp_path)
        plant(kind, run, marker)
    capsys.readouterr()
    exported = tmp_path / "exported.safetensors"
    for argv, main in (([run, "--max_new_tokens", 2], generate_main), ([run, "--export", exported], generate_main),
                       ((["--resume", run, "--max_steps", 3]), run_train)):
        rc = main(argv)
        if main is generate_main and kind in STATE_ONLY:
            assert rc == 0  # sampling reads the weights, not the optimizer, sampler and RNG state
        else:
            one_line_error(capsys, rc, PLANTED[kind])
        assert not marker.exists(), f"{kind}: the payload ran ({argv})"
    assert exported.exists() == (kind in STATE_ONLY)


def test_a_planted_pickle_as_an_exported_model_never_runs(tmp_path, capsys):
    marker = tmp_path / MARKER_NAME
    for name in ("model.safetensors", "exported.pt", "exported"):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(Payload(marker), f)
        rc = generate_main([tmp_path / name])
        one_line_error(capsys, rc, "older version" if name.endswith(".pt") else "not a safetensors file")
        assert not marker.exists()


def test_export_writes_safetensors_that_generate_samples_from_alone(trained_run, tmp_path, capsys):
    """--export: one safetensors file with the config, step and tokenizer in its metadata; generate needs nothing
    else (the run directory is gone), and samples what the checkpoint samples."""
    from safetensors import safe_open

    run = copy_run(trained_run, tmp_path)
    exported = tmp_path / "model.safetensors"
    assert generate_main([run, "--export", exported]) == 0
    assert "sample from it with generate.py" in capsys.readouterr().out
    with safe_open(str(exported), framework="pt") as f:
        meta = f.metadata()
        assert json.loads(meta["model_config"]) == TEST.to_dict() and meta["step"] == "2"
        assert json.loads(meta["config"])["model"]["dim"] == TEST.dim and '"<|endoftext|>"' in meta["tokenizer"]
    args = ["--max_new_tokens", 8, "--temperature", 0, "--device", "cpu"]
    assert generate_main([run, *args]) == 0
    from_run = capsys.readouterr().out
    shutil.rmtree(run)
    assert generate_main([exported, *args]) == 0
    assert capsys.readouterr().out == from_run and "--- sample 1 (step 2) ---" in from_run


def test_a_sharded_checkpoint_loads_through_the_safe_readers_and_resumes(trained_run, tmp_path, capsys):
    """DCP's own metadata (its classes, torch.Size, dtypes, paths) passes the restricted unpickler; the weights
    come back exactly; a shard cut short is a corrupt checkpoint, not a crash."""
    run = sharded_copy(trained_run, tmp_path)
    weights = load_model_weights(run)["model"]
    original = load_model_weights(trained_run)["model"]
    assert weights.keys() == original.keys() and all(torch.equal(weights[k], original[k]) for k in weights)
    assert run_train(["--resume", run, "--max_steps", 3]) == 0  # one process resumes a sharded checkpoint
    assert max(losses(run)) == 3
    (checkpoint,) = [p for p in list_checkpoints(run) if p.name.endswith("2")]
    shard = next(checkpoint.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint(checkpoint)


# ------------------------------------------------------------------------------------- exact resume
STEPS = 4


def tokens() -> np.ndarray:
    return (np.arange(8192) * 7919 % 509).astype(np.uint16)


def config(precision: str, accumulation: int = 2):
    fp8 = fp8_config() if precision == "fp8" else None
    return make_config(TEST, fp8, batch_size=2, gradient_accumulation_steps=accumulation, max_steps=STEPS,
                       eval_interval=2, checkpoint_interval=3, log_interval=1)


def trainer_for(precision: str, out_dir: Path):
    torch.manual_seed(0)
    return make_trainer(config(precision), tokens(), out_dir, val_tokens=tokens()[:400])


def final_state(trainer) -> dict[str, torch.Tensor]:
    """The weights, the optimizer moments and (float8) the amax history at the end of training."""
    state = {f"model.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    for i, s in enumerate(trainer.optimizer.state.values()):
        state.update({f"optim.{i}.{k}": v.clone() for k, v in s.items()})
    for c in trainer.converters:
        if c.state_dict():
            state["amax_history"] = c.state_dict()["history"]
    return state


_BASELINES: dict[str, dict[str, torch.Tensor]] = {}


def uninterrupted(precision: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    if precision not in _BASELINES:
        trainer = trainer_for(precision, tmp_path / "baseline")
        trainer.train()
        _BASELINES[precision] = final_state(trainer)
    return _BASELINES[precision]


def nth_call(owner, name: str, n: int, after: bool = True, how: str = "raise"):
    """owner.name wrapped: its n-th call raises KeyboardInterrupt (after doing its work, or before), or sends
    this process SIGINT ("signal", handled wherever the Python signal handler runs: see Trainer._on_signal)."""
    real = getattr(owner, name)
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        count["n"] += 1
        hit = count["n"] == n
        if hit and how == "signal":
            os.kill(os.getpid(), signal.SIGINT)
        if hit and not after and how == "raise":
            raise KeyboardInterrupt
        result = real(*args, **kwargs)
        if hit and after and how == "raise":
            raise KeyboardInterrupt
        return result

    return real, wrapper


def interrupt_mid_backward(monkeypatch, n: int) -> None:
    """A KeyboardInterrupt raised by a hook on the embedding's output in the n-th backward pass: the blocks'
    gradients are accumulated, the embedding's not yet."""
    from cs336_basics.model.transformer import Transformer

    real_forward = Transformer.forward
    count = {"n": 0}

    def forward(self, idx, targets=None):
        if not torch.is_grad_enabled():
            return real_forward(self, idx, targets)
        real_embed = self.embed.forward

        def embed(x):
            out = real_embed(x)
            count["n"] += 1
            if count["n"] == n and out.requires_grad:
                out.register_hook(lambda grad: (_ for _ in ()).throw(KeyboardInterrupt))
            return out

        self.embed.forward = embed
        try:
            return real_forward(self, idx, targets)
        finally:
            del self.embed.forward

    monkeypatch.setattr(Transformer, "forward", forward)


def arm(point: str, trainer, monkeypatch) -> None:
    """Make `trainer` stop at `point` (two micro-batches a step, an evaluation after step 2, checkpoints after steps 3
    and 4: a stop in step 3 is checkpointed by the stop itself, one in step 4 finds step 3's written)."""
    from cs336_basics.data.batches import RandomWindows
    from cs336_basics.model.transformer import Transformer
    from cs336_basics.precision.converters import Float8Converter
    from cs336_basics.precision.fp8_delayed import DelayedScaling
    from cs336_basics.training.trainer import Trainer

    def patch(owner, name, n, after=True, how="raise"):
        real, wrapper = nth_call(owner, name, n, after, how)
        monkeypatch.setattr(owner, name, wrapper)

    fp8 = bool(trainer.converters)
    calibration = 1 if fp8 else 0  # delayed float8's calibration draws the first batch once more
    kind, _, where = point.partition("@")
    step_3 = 2 * 2 + 1 + calibration  # the first micro-batch of step 3
    if kind == "next_batch":  # after the draw: the sampler has moved
        patch(RandomWindows, "next_batch", {"first": 1 + calibration, "second": 2 + calibration,
                                            "step3": step_3, "step3b": step_3 + 1, "step4": step_3 + 2}[where])
    elif kind == "sigint_in_next_batch":
        patch(RandomWindows, "next_batch", step_3 + 1, how="signal")
    elif kind == "forward":
        patch(Transformer, "forward", {"step1": 1 + calibration, "step3": step_3 + 1}[where])
    elif kind == "backward":
        interrupt_mid_backward(monkeypatch, {"step1": 2 + calibration, "step3": step_3}[where])
    elif kind == "after_backward":
        patch(torch.Tensor, "backward", step_3 + 1)  # the last micro-batch's: the gradients are all there
    elif kind == "optimizer_step":
        real, wrapper = nth_call(trainer.optimizer, "step", 3, after=False)
        monkeypatch.setattr(trainer.optimizer, "step", wrapper)
    elif kind == "sigint_in_optimizer_step":  # a real signal meanwhile: the step completes, then the run stops
        real, wrapper = nth_call(trainer.optimizer, "step", 3, how="signal")
        monkeypatch.setattr(trainer.optimizer, "step", wrapper)
    elif kind == "evaluate":
        patch(Trainer, "evaluate", 1)
    elif kind == "checkpoint_write":  # the step-3 checkpoint half-written
        patch(ckpt, "write_checkpoint_files", 1)
    elif kind == "calibration":
        patch(DelayedScaling, "calibrate", 1)
    elif kind == "between_micro_batches":
        patch(Float8Converter, "between_micro_batches", 3)
    elif kind == "scales_update":  # the amax history has moved on, the weights not yet
        patch(DelayedScaling, "update", 4)  # (the calibration's is the first)
    elif kind == "weight_casts":
        patch(Float8Converter, "before_step", 3)
    else:
        raise AssertionError(point)


COMMON = ["next_batch@first", "next_batch@second", "next_batch@step3", "next_batch@step3b", "next_batch@step4",
          "sigint_in_next_batch",
          "forward@step1", "forward@step3", "backward@step1", "backward@step3", "after_backward", "optimizer_step",
          "sigint_in_optimizer_step", "evaluate", "checkpoint_write"]
FP8_ONLY = ["calibration", "between_micro_batches", "scales_update", "weight_casts"]


FP32 = ["next_batch@first", "next_batch@step3", "next_batch@step4", "sigint_in_next_batch", "forward@step3", "backward@step3", "after_backward",
        "optimizer_step", "sigint_in_optimizer_step", "evaluate", "checkpoint_write"]  # float8 runs every point


@pytest.mark.parametrize("precision, point", [("fp32", p) for p in FP32] + [("fp8", p) for p in COMMON + FP8_ONLY])
def test_a_stop_at_any_moment_of_a_step_resumes_bit_for_bit(tmp_path, monkeypatch, precision, point):
    """Stopped anywhere (Ctrl-C raised inside the sampler, the forward, the backward, between micro-batches, in the
    optimizer step, in a converter's hooks, in evaluation or a checkpoint write; or a real SIGINT), the run writes
    a checkpoint of the steps done, and a run resumed from it ends with the weights, optimizer moments and amax
    history of the run never stopped, bit for bit."""
    expected = uninterrupted(precision, tmp_path)
    first = trainer_for(precision, tmp_path / "run")
    with monkeypatch.context() as patched:
        arm(point, first, patched)
        with pytest.raises(KeyboardInterrupt):
            first.train()
    state = load_checkpoint(tmp_path / "run")
    assert state["step"] == first.step < STEPS
    second = trainer_for(precision, tmp_path / "run")
    second.load_state_dict(state)
    second.train()
    got = final_state(second)
    assert got.keys() == expected.keys()
    different = [k for k in got if not torch.equal(got[k], expected[k])]
    assert not different, f"stopped at {point} (step {state['step']}): {different[:5]}"


def test_a_signal_in_the_optimizer_step_lets_it_finish(tmp_path, monkeypatch):
    """The optimizer step runs whole: a SIGINT that arrives meanwhile takes effect once the step is counted."""
    trainer = trainer_for("fp32", tmp_path / "run")
    real, wrapper = nth_call(trainer.optimizer, "step", 1, how="signal")
    monkeypatch.setattr(trainer.optimizer, "step", wrapper)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert trainer.step == 1 and load_checkpoint(tmp_path / "run")["step"] == 1
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # the handlers given back


@pytest.fixture
def group_of_one():
    """A gloo process group of one process, so that a Trainer told it is one of two ranks runs its collectives."""
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_several_processes_stop_together_at_an_agreed_step_boundary(tmp_path, monkeypatch, group_of_one):
    """Under torchrun a signal does not interrupt a rank mid-step (the others would wait in a collective): every
    rank stops at the step boundary after the ranks' flags were reduced, with a checkpoint of that step, which
    resumes bit for bit; a second signal stops at once."""
    from cs336_basics.data.batches import RandomWindows
    from cs336_basics.training.distributed import DistributedContext

    def two_ranks(out_dir: Path):
        trainer = trainer_for("fp32", out_dir)
        trainer.ctx = DistributedContext(rank=0, world_size=2, launched=True)  # collectives over the group of one
        return trainer

    baseline = two_ranks(tmp_path / "baseline")
    baseline.train()
    expected = final_state(baseline)

    first = two_ranks(tmp_path / "run")
    with monkeypatch.context() as patched:
        real, wrapper = nth_call(RandomWindows, "next_batch", 3, how="signal")  # in step 2
        patched.setattr(RandomWindows, "next_batch", wrapper)
        with pytest.raises(KeyboardInterrupt):
            first.train()
    assert first.step == 3  # step 2 finished; its boundary reduced the flag, read at step 3's boundary
    state = load_checkpoint(tmp_path / "run")
    assert state["step"] == 3  # a whole (unsharded) model: the one-process format, written by rank 0
    second = two_ranks(tmp_path / "run")
    second.load_state_dict(state)
    second.train()
    assert all(torch.equal(v, expected[k]) for k, v in final_state(second).items())

    again = two_ranks(tmp_path / "again")
    with monkeypatch.context() as patched:
        count = {"n": 0}

        def twice(self, device):
            count["n"] += 1
            if count["n"] == 3:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)  # insisting: at once
            return real(self, device)

        patched.setattr(RandomWindows, "next_batch", twice)
        with pytest.raises(KeyboardInterrupt):
            again.train()
    assert again.step == 1


# ------------------------------------------------------------------------------------------ resume state
def test_a_part_written_metrics_line_does_not_stop_a_resume(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 4.1')  # a crash mid-line
    assert run_train(["--resume", run, "--max_steps", 4]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps)) and max(steps) == 4


def test_max_steps_below_the_checkpoint_is_an_error(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    one_line_error(capsys, run_train(["--resume", run, "--max_steps", 1]), "--max_steps 1 is below step 2")
    assert max(losses(run)) == 2


def test_resuming_on_other_training_data_is_refused(trained_run, tmp_path, capsys, cli_data):
    corpus, _ = cli_data
    run = copy_run(trained_run, tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("other text, other tokens. " * 400)
    one_line_error(capsys, run_train(["--resume", run, "--train_data", other]), "start a new run (--out_dir NEW)")
    one_line_error(capsys, run_train(["--resume", run, "--val_data", other]), "--val_data differs")
    spelled_otherwise = Path(os.path.relpath(corpus, Path.cwd()))  # the same file: fine
    assert run_train(["--resume", run, "--train_data", spelled_otherwise, "--max_steps", 3]) == 0


def test_the_checkpoints_tokenizer_wins_over_a_stale_one(trained_run, tmp_path, capsys, small_corpus, cli_data):
    """A tokenizer.json that is not the checkpoint's (left by a failed attempt, or copied over) is replaced by the
    copy each checkpoint keeps, and said so; a new run into a directory a failed attempt left a tokenizer in uses
    and records its own, and resumes."""
    from cs336_basics.data.corpus import iter_chunks
    from cs336_basics.data.tokenizer import tokenizer_fingerprint, train_tokenizer

    run = copy_run(trained_run, tmp_path)
    stale = train_tokenizer(iter_chunks(small_corpus), 300)
    (run / "tokenizer.json").write_text(stale.to_str())
    assert run_train(["--resume", run, "--max_steps", 3]) == 0
    assert "is not the tokenizer the checkpoint was trained with; restored from" in capsys.readouterr().err
    fingerprint = load_checkpoint(run)["tokenizer_fingerprint"]
    from tokenizers import Tokenizer

    assert tokenizer_fingerprint(Tokenizer.from_file(str(run / "tokenizer.json"))) == fingerprint

    corpus, cache = cli_data
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "tokenizer.json").write_text(stale.to_str())  # what a failed first attempt left
    from conftest import TEST_FLAGS

    base = [*TEST_FLAGS, "--train_data", corpus, "--set", f"data.cache_dir={cache}", "--batch_size", 2,
            "--set", "train.eval_steps=1", "--set", "run.sample_tokens=0", "--out_dir", fresh]
    assert run_train(base + ["--max_steps", 1]) == 0
    used = load_checkpoint(fresh)["tokenizer_fingerprint"]
    assert used != tokenizer_fingerprint(stale)
    assert tokenizer_fingerprint(Tokenizer.from_file(str(fresh / "tokenizer.json"))) == used
    assert run_train(["--resume", fresh, "--max_steps", 2]) == 0


def test_summary_and_metrics_are_strict_json(tmp_path):
    from cs336_basics.cli.train import report_results
    from cs336_basics.training.metrics import MetricsLog

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))

    report_results({"steps": 0, "final_train_loss": float("nan"), "interrupted_at_step": 0,
                    "fp8_overflow_max": float("inf")}, tmp_path)
    summary = strict((tmp_path / "summary.json").read_text())
    assert summary["final_train_loss"] is None and summary["fp8_overflow_max"] is None
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 1, "loss": 2.0, "grad_norm": float("inf")})
    assert strict((tmp_path / "metrics.jsonl").read_text())["grad_norm"] is None


def test_a_corrupt_newest_checkpoint_falls_back_to_the_newest_intact_one(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    assert run_train(["--resume", run, "--max_steps", 4, "--set", "train.checkpoint_interval=1"]) == 0
    assert [int(p.name[5:]) for p in list_checkpoints(run)] == [2, 3, 4]
    newest = list_checkpoints(run)[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a crash mid-write, or a bad disk
    (list_checkpoints(run)[-2] / "state.pt").write_bytes(b"")
    capsys.readouterr()
    assert run_train(["--resume", run, "--max_steps", 5]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "unreadable" in line]
    assert len(warnings) == 1 and "skipped 2 unreadable newer checkpoints" in warnings[0]
    assert warnings[0].endswith("step_0000002")
    assert f"resumed from {run / 'checkpoints' / 'step_0000002'} at step 2" in captured.out
    assert generate_main([run, "--max_new_tokens", 4, "--device", "cpu"]) == 0  # the new step-5 checkpoint
    assert "(step 5)" in capsys.readouterr().out


def test_old_format_checkpoints_are_refused_with_the_reason(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "model_config": {}, "step": 1}, tmp_path / "run" / "checkpoints" / "step_0000001.pt")
    line = one_line_error(capsys, generate_main([tmp_path / "run"]), "written by an older version")
    assert "start a new run" in line
    one_line_error(capsys, run_train(["--resume", tmp_path / "run"]), "written by an older version")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
