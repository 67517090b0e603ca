"""Training: the CLI end to end on CPU (resume exactness, errors, run-directory protection), the Trainer built
from a config (resolve_config -> prepare_model -> Trainer), and the compile / CUDA-graph logic that runs on CPU."""

import gc
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cs336_basics.config import Config, TrainConfig, read_toml
from cs336_basics.data.batches import RandomWindows
from cs336_basics.errors import UserError
from cs336_basics.model.transformer import ModelConfig, Transformer
from cs336_basics.training.checkpoint import config_from_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from cs336_basics.training.lr_schedule import lr_at
from conftest import CPU, ROOT, TEST, TEST_FLAGS, losses, make_config, make_trainer, one_line_error, quiet, run_train

train = run_train
SMALL = ModelConfig(vocab_size=256, context_length=16, dim=32, n_layers=1, n_heads=2, intermediate_size=64)


def base_args(tmp_path: Path, corpus: Path, out: str = "run", steps: int = 10) -> list:
    return [*TEST_FLAGS, "--train_data", corpus, "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--out_dir", tmp_path / out, "--max_steps", steps, "--batch_size", 4, "--warmup_steps", 2,
            "--eval_interval", 5, "--set", "train.eval_steps=2", "--set", "train.checkpoint_interval=5",
            "--set", "train.log_interval=1", "--set", "run.sample_tokens=0", "--lr", 3e-3, "--set", "train.min_lr=3e-4"]


def test_lr_schedule_values():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)  # half way through the cosine
    assert lr_at(110, **kw) == pytest.approx(0.1) and lr_at(500, **kw) == pytest.approx(0.1)
    assert all(lr_at(s, **kw) >= lr_at(s + 1, **kw) for s in range(10, 120))


@pytest.mark.parametrize("precision", [[], ["--use_fp8", "--set", "fp8.emulate=true", "--fp8_recipe", "delayed"]],
                         ids=["bf16", "fp8-delayed"])
def test_ctrl_c_checkpoints_and_resume_reproduces_losses(tmp_path, small_corpus, monkeypatch, precision):
    """Delayed float8 scaling too: its amax history travels in the checkpoint, so the resumed run uses the scales
    the uninterrupted run had (a recalibration would give other scales, other losses). The resume passes no
    settings: they all come from the run's config.toml."""
    assert train(base_args(tmp_path, small_corpus, "full") + precision) == 0
    expected = losses(tmp_path / "full")
    # the delayed recipe's default: each SwiGLU block fused (swiglu_fp8.py); its checkpoint resumes like the rest
    fp8 = read_toml(tmp_path / "full" / "config.toml")["fp8"]
    assert fp8["enabled"] == bool(precision) and fp8["fused_swiglu"] is True

    real_next = RandomWindows.next_batch
    calls = {"n": 0}

    def interrupt_at_step_8(self, device):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real_next(self, device)

    monkeypatch.setattr(RandomWindows, "next_batch", interrupt_at_step_8)
    assert train(base_args(tmp_path, small_corpus, "cut") + precision) == 130
    monkeypatch.setattr(RandomWindows, "next_batch", real_next)
    # written on Ctrl-C: after step 7, or 6 with delayed scaling, whose calibration draws the first batch once more
    last = 6 if precision else 7
    assert [int(p.stem.split("_")[1]) for p in list_checkpoints(tmp_path / "cut")] == [5, last]
    state = load_checkpoint(tmp_path / "cut")
    assert state["converter_names"] == (["Float8Converter"] if precision else [])
    if precision:  # the delayed scales' amax histories are in the checkpoint
        (scales,) = state["converters"]
        assert scales and all(isinstance(t, torch.Tensor) for t in scales.values())
    # and what the steps done measured: summary.json says where the run stopped
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert cut["interrupted_at_step"] == cut["steps"] == last and cut["tokens_per_second"] > 0

    # a hard kill after the step-7 checkpoint would leave records beyond it: the resumed run must not repeat them
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": last + 1, "loss": 99.0}) + "\n")
    assert train(["--resume", tmp_path / "cut"]) == 0
    steps = [r["step"] for r in map(json.loads, (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps))  # each step logged once
    resumed = losses(tmp_path / "cut")
    assert sorted(resumed) == list(range(1, 11))
    whole = json.loads((tmp_path / "cut" / "summary.json").read_text())  # the interrupted segment kept under earlier
    assert whole["steps"] == 10 and "interrupted_at_step" not in whole and whole["earlier"][0]["interrupted_at_step"] == last
    for step in range(1, 11):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-5), step


def test_cli_trains_on_shakespeare_and_loss_falls(tmp_path, shakespeare, capsys):
    rc = train(["--config", "tiny", "--train_data", shakespeare, "--set", f"data.cache_dir={tmp_path / 'cache'}",
                "--out_dir", tmp_path / "shk", "--max_steps", 30, "--batch_size", 8, "--warmup_steps", 5, "--lr", 3e-3,
                "--eval_interval", 15, "--set", "train.eval_steps=4", "--set", "train.log_interval=5",
                "--set", "run.sample_tokens=20"])
    out = capsys.readouterr().out
    assert rc == 0
    trace = losses(tmp_path / "shk")
    assert trace[30] < trace[5] - 0.5
    summary = json.loads((tmp_path / "shk" / "summary.json").read_text())
    assert summary["steps"] == 30 and math.isfinite(summary["val_loss"]) and summary["tokens_per_second"] > 0
    assert (tmp_path / "shk" / "loss.png").stat().st_size > 1000
    assert "Configuration" in out and "CPU RUN" in out and "sample: " in out
    assert "dim 128, 4 layers, 4 heads, SwiGLU 384, vocab 2048" in out  # the tiny recipe's model


def test_checkpoints_keep_last_k_and_corrupt_file_is_reported(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"model": {}, "model_config": {}, "step": step, "optimizer": {}, "sampler": {},
                                         "rng": {}, "converters": []}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000004", "step_0000005"]
    assert load_checkpoint(tmp_path)["step"] == 5
    for checkpoint in list_checkpoints(tmp_path):  # the newest intact one is used (tests/test_hardening_state.py)
        state = checkpoint / "state.pt"
        state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("extra, pattern", [
    (["--dim", 100, "--n_heads", 3], "not divisible by --n_heads"),
    (["--dim", 96, "--n_heads", 32], "is odd"),
    (["--batch_size", 0], "train.batch_size must be a positive integer"),
    (["--max_steps", -1], "train.max_steps must be a positive integer"),
    (["--set", "train.grad_clip=-1"], "train.grad_clip must be >= 0"),
    (["--set", "train.gc_interval=-1"], "train.gc_interval must be >= 0"),
    (["--set", "train.lr=fast"], "train.lr must be a number, got 'fast'"),
    (["--set", "train.lr"], "--set takes SECTION.FIELD=VALUE"),
    (["--set", "train.tune_kernels=true"], "train.tune_kernels tunes the compiled kernels: add --compile_model"),
    (["--set", "train.tune_kernels=true", "--compile_model"], "tunes Triton kernels, which run on CUDA GPUs only"),
    (["--set", "run.dp_replicate=2"], "needs several processes"),
    (["--context_length", 100000], "fewer than one context window"),
    (["--use_fp8"], "needs a GPU with float8 tensor cores"),
    (["--use_fp8", "--set", "fp8.emulate=true", "--set", "fp8.filter=auto"], "fp8.filter auto times each layer shape"),
    (["--use_fp8", "--set", "fp8.emulate=true", "--fp8_recipe", "delayed", "--set", "fp8.filter=auto"],
     "fp8.filter auto times TorchAO's layers"),
    (["--use_fp8", "--set", "fp8.emulate=true", "--set", "fp8.margin=-1"], "fp8.margin must be >= 0"),
    (["--set", "fp8.emulate=true"], "fp8.emulate only apply to float8 training: add --use_fp8"),
    (["--set", "fp8.head=false"], "fp8.head only apply to float8 training"),
    (["--set", "fp8.fused_swiglu=false"], "fp8.fused_swiglu only apply to float8 training"),
    (["--use_fp8", "--set", "fp8.emulate=true", "--fp8_recipe", "rowwise", "--set", "fp8.fused_swiglu=true"],
     "fp8.fused_swiglu set the delayed recipe's layers, not rowwise's"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "nonsense"], "--device"),
    (["--set", "train.residual_dtype=fp16"], "train.residual_dtype must be one of auto, fp32, bf16"),
    (["--set", "train.residual_dtype=bf16"], "train.residual_dtype bf16 needs bf16 autocast"),
    (["--set", "train.bf16_weight_cache=true"], "train.bf16_weight_cache applies to bf16 training on GPUs with whole weights"),
])
def test_bad_flags(tmp_path, small_corpus, capsys, extra, pattern):
    one_line_error(capsys, train(base_args(tmp_path, small_corpus) + extra), pattern)


def test_bad_data_files(tmp_path, small_corpus, capsys):
    def with_data(path: Path) -> list:
        args = base_args(tmp_path, small_corpus)
        args[args.index(small_corpus)] = path
        return args

    one_line_error(capsys, train(with_data(tmp_path / "missing.txt")), "does not exist")
    (tmp_path / "empty.txt").write_text("")
    one_line_error(capsys, train(with_data(tmp_path / "empty.txt")), "is empty")
    (tmp_path / "latin1.txt").write_bytes("café crème brûlée ".encode("latin-1") * 100)
    one_line_error(capsys, train(with_data(tmp_path / "latin1.txt")), "not UTF-8")


def test_run_directory_protection_and_resume_errors(tmp_path, small_corpus, capsys):
    assert train(base_args(tmp_path, small_corpus, steps=5)) == 0
    capsys.readouterr()
    one_line_error(capsys, train(base_args(tmp_path, small_corpus, steps=5)), "holds another run")
    assert list_checkpoints(tmp_path / "run")  # nothing was removed
    one_line_error(capsys, train(["--resume", tmp_path / "run", "--dim", 64]), "model.dim differ from the checkpoint's model")
    one_line_error(capsys, train(["--resume", tmp_path / "run", "--config", "tiny"]), "drop --config")
    one_line_error(capsys, train(["--resume", tmp_path / "run", "--overwrite"]), "drop one of them")
    one_line_error(capsys, train(["--resume", tmp_path / "run", "--out_dir", tmp_path / "elsewhere"]), "continues in DIR")
    one_line_error(capsys, train(["--resume", tmp_path / "nowhere"]), "does not exist")
    (tmp_path / "empty_run").mkdir()
    one_line_error(capsys, train(["--resume", tmp_path / "empty_run"]), "no checkpoint in")

    other_tok = tmp_path / "other_tokenizer.json"
    from cs336_basics.data.corpus import iter_chunks
    from cs336_basics.data.tokenizer import train_tokenizer

    train_tokenizer(iter_chunks(small_corpus), 300).save(str(other_tok))
    one_line_error(capsys, train(["--resume", tmp_path / "run", "--tokenizer", other_tok]),
                   "not the one the checkpoint was trained with")

    ckpt = list_checkpoints(tmp_path / "run")[-1]
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    one_line_error(capsys, train(["--resume", tmp_path / "run"]), "corrupt or truncated")
    assert train(base_args(tmp_path, small_corpus, steps=5) + ["--overwrite"]) == 0


def test_token_ids_beyond_model_vocabulary(tmp_path, small_corpus, capsys):
    """A tokenizer passed with --tokenizer that is larger than the model's vocabulary is refused."""
    from cs336_basics.data.corpus import iter_chunks
    from cs336_basics.data.tokenizer import train_tokenizer

    big = tmp_path / "big.json"
    train_tokenizer(iter_chunks(small_corpus), 700).save(str(big))
    one_line_error(capsys, train(base_args(tmp_path, small_corpus) + ["--tokenizer", big]), "raise --vocab_size")


def test_grad_clip_zero_disables_clipping_but_logs_the_norm(tmp_path, small_corpus):
    assert train(base_args(tmp_path, small_corpus, steps=3) + ["--set", "train.grad_clip=0"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    norms = [r["grad_norm"] for r in records if "grad_norm" in r]
    assert len(norms) == 3 and all(n > 0 for n in norms)
    assert losses(tmp_path / "run")[3] < losses(tmp_path / "run")[1]  # the gradients were not zeroed


def test_training_collects_garbage_on_its_own_schedule(tmp_path, small_corpus, monkeypatch):
    """Automatic collection is off while the steps run, a young collection comes every train.gc_interval
    steps, and Python's automatic collection is back on afterwards."""
    seen: list[tuple[int, bool]] = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda generation=2: seen.append((generation, gc.isenabled())) or real_collect(generation))
    assert gc.isenabled()
    assert train(base_args(tmp_path, small_corpus, steps=6) + ["--set", "train.gc_interval=2"]) == 0
    assert gc.isenabled()
    during = [g for g, enabled in seen if not enabled]
    assert during == [1, 1, 1]  # after steps 2, 4 and 6, with automatic collection off
    seen.clear()
    assert train(base_args(tmp_path, small_corpus, "auto", steps=3) + ["--set", "train.gc_interval=0"]) == 0
    assert not [g for g, enabled in seen if not enabled]


def test_divergence_stops_without_saving_a_bad_checkpoint(tmp_path, small_corpus, capsys):
    args = base_args(tmp_path, small_corpus, steps=10) + ["--set", "train.log_interval=100", "--lr", 1e6, "--set",
                                                         "train.min_lr=1e5", "--warmup_steps", 0, "--set", "train.grad_clip=0"]
    rc = train(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and re.match(r"error: loss became (nan|inf) at step 5;", err[-1]), err[-1]
    assert list_checkpoints(tmp_path / "run") == []  # the diverged step-5 weights were not written


def test_the_run_records_the_residual_stream_it_trains_with_and_old_checkpoints_keep_float32(tmp_path):
    """train.residual_dtype "auto" is resolved by prepare_model (float32 on CPU) and recorded beside the config in
    each checkpoint; a checkpoint saved before the setting (and the config) existed trained with the float32
    stream and resumes with it, unless the command line says otherwise."""
    from cs336_basics.config import with_overrides

    tokens = np.arange(4096, dtype=np.uint32) % TEST.vocab_size
    trainer = make_trainer(make_config(batch_size=2, max_steps=1), tokens, tmp_path)
    assert TrainConfig().residual_dtype == "auto" and trainer.prepared.residual_dtype == "fp32"
    old = {"model_config": TEST.to_dict(), "train_config": {"batch_size": 2, "fp8_weight_cache": None},
           "fp8": True, "fp8_recipe": "delayed", "fp8_fused_swiglu": False, "train_data": ["a.txt"]}
    with pytest.raises(UserError, match="written by an older version"):  # pickle checkpoints are not loaded any more
        config_from_checkpoint(old)
    new = config_from_checkpoint({"model_config": TEST.to_dict(), "config": Config(model=TEST).to_dict()})
    assert with_overrides(new, {"train.residual_dtype": "bf16"}).train.residual_dtype == "bf16"  # a flag still wins
    assert new.train.residual_dtype == "auto"  # resolved for the device afterwards


def test_resume_keeps_the_runs_speed_and_precision_settings_unless_flags_change_them(tmp_path, small_corpus, capsys):
    first = base_args(tmp_path, small_corpus, "run", steps=5) + [
        "--no_gradient_checkpointing", "--use_flash_attn", "--set", "train.fused_attention=flash",
        "--use_fp8", "--set", "fp8.emulate=true", "--fp8_recipe", "rowwise", "--set", "fp8.head=false"]
    assert train(first) == 0
    assert "kept in bf16 (output head): output.proj" in capsys.readouterr().out
    # nothing but the new step count: everything else (float8 emulation included) comes from the run's config
    assert train(["--resume", tmp_path / "run", "--max_steps", 6]) == 0
    out = capsys.readouterr().out
    assert re.search(r"grad checkpoint\s+off", out) and "rowwise" in out and "float8" in out.lower()
    assert re.search(r"attention\s+FLASH_ATTENTION", out)
    assert "kept in bf16 (output head): output.proj" in out and "cross-entropy: float8" not in out
    assert read_toml(tmp_path / "run" / "config.toml")["train"]["max_steps"] == 6
    # flags still win: back to bf16 with checkpointing, the fp8 checkpoint loading into a plain model
    assert train(["--resume", tmp_path / "run", "--max_steps", 7, "--no-use_fp8", "--gradient_checkpointing"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"grad checkpoint\s+on", out) and "float8" not in out.lower()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())  # each segment's figures are kept
    assert summary["steps"] == 7 and [s["steps"] for s in summary["earlier"]] == [5, 6]
    saved = read_toml(tmp_path / "run" / "config.toml")
    assert saved["fp8"]["enabled"] is False and saved["train"]["gradient_checkpointing"] is True
    assert load_checkpoint(tmp_path / "run")["config"]["fp8"]["enabled"] is False


@pytest.mark.parametrize("grad_clip", [0.05, 1e6])  # clipping active / inactive
def test_clipping_inside_the_fused_optimizer_matches_clip_then_step(tmp_path, grad_clip):
    """One device: the fused AdamW divides the gradients by max(1, norm / grad_clip) as it steps. The
    result must equal PyTorch's clip_grad_norm_ followed by a plain (for-loop) AdamW step."""
    torch.manual_seed(0)
    tokens = torch.randint(0, TEST.vocab_size, (4096,)).numpy().astype("uint16")
    torch.manual_seed(1)
    trainer = make_trainer(make_config(batch_size=4, warmup_steps=0, grad_clip=grad_clip), tokens, tmp_path)
    model = trainer.model
    reference = Transformer(TEST)
    reference.load_state_dict(model.state_dict())
    assert trainer._clip_in_optimizer
    x, y = RandomWindows(tokens, 4, TEST.context_length, 0).next_batch(CPU)

    _, norm = trainer.train_step(1e-2)

    reference(x, y).backward()
    expected_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), grad_clip)
    decay = [p for p in reference.parameters() if p.dim() >= 2]
    no_decay = [p for p in reference.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": trainer.cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.95), eps=1e-8,
                            foreach=False)
    opt.step()
    assert float(norm) == pytest.approx(float(expected_norm), rel=1e-5)
    assert (float(expected_norm) > grad_clip) == (grad_clip < 1)  # the first case really clips
    for (name, got), want in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("fp8, device, sharded, expected", [
    (True, "cuda", False, "reduce-overhead"),  # one process or DDP
    (False, "cuda", False, "default"),  # bf16 steps are GPU-bound: CUDA graphs measured no gain
    (True, "cuda", True, "default"),  # FSDP: its hooks run inside every block
    (True, "cpu", False, "default"),
])
def test_auto_compile_mode(fp8, device, sharded, expected):
    from cs336_basics.training.transforms import resolve_compile_mode

    assert resolve_compile_mode("auto", fp8, torch.device(device), sharded) == expected
    assert resolve_compile_mode("max-autotune", fp8, torch.device(device), sharded) == "max-autotune"


_NORM_WARNING_SCRIPT = """
import sys, warnings, torch, torch.nn.functional as F
from cs336_basics.model.transformer import ModelConfig, Transformer
from cs336_basics.training.transforms import compile_model
if sys.argv[1] == "compiled":  # lazy: nothing is traced here
    compile_model(Transformer(ModelConfig(vocab_size=64, context_length=8, dim=16, n_layers=1, n_heads=2, intermediate_size=32)))
F.rms_norm(torch.randn(4, 8, dtype=torch.bfloat16), (8,), torch.ones(8), 1e-5)
warnings.warn("another warning still shows")
"""


@pytest.mark.parametrize("how", ["eager", "compiled"])
def test_compiling_silences_atens_norm_dtype_warning(how):
    """A bf16 residual stream meets the float32 norm weight while a block is traced on a GPU; ATen's warning that its
    own fused norm kernel cannot run is not about a compiled run, so compiling hides it, and only it. Eager CPU raises
    the same text, once a process: hence a fresh process each."""
    err = subprocess.run([sys.executable, "-W", "always", "-c", _NORM_WARNING_SCRIPT, how], capture_output=True,
                         text=True, check=True, cwd=ROOT, timeout=120).stderr
    assert ("Mismatch dtype between input and weight" in err) == (how == "eager")
    assert "another warning still shows" in err


def no_compile(monkeypatch, calls: list | None = None) -> None:
    """prepare_model's torch.compile replaced by a record of the modes it was asked for (no compiling on CPU)."""
    import cs336_basics.training.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "compile_model",
                        lambda model, mode, tune_kernels=False: calls.append(mode) if calls is not None else None)


def test_cuda_graph_generations_begin_at_every_step_and_evaluation_batch(tmp_path, monkeypatch):
    """With CUDA graphs each step and each evaluation batch starts a new graph generation (the blocks' graphs,
    chained in one forward, would otherwise free each other's outputs in no-grad evaluation)."""
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    no_compile(monkeypatch, marks)
    tokens = (np.arange(4096) % 97).astype(np.uint16)
    for mode, expected in (("reduce-overhead", 1), ("default", 0)):
        marks.clear()
        trainer = make_trainer(make_config(SMALL, batch_size=2, max_steps=3, compile_model=True, compile_mode=mode,
                                           eval_steps=4), tokens, tmp_path / mode, val_tokens=tokens[:200])
        assert marks == [mode] and trainer.compile_mode == mode
        marks.clear()
        trainer.train_step(1e-3)
        trainer.train_step(1e-3)
        assert len(marks) == 2 * expected
        marks.clear()
        trainer.evaluate()  # 200 tokens: 12 windows of 16, in batches of 2 capped at 4 batches
        assert len(marks) == 4 * expected


def test_compile_mode_auto_is_recorded_as_what_ran(tmp_path, small_corpus, capsys, monkeypatch):
    no_compile(monkeypatch)
    assert train(base_args(tmp_path, small_corpus, steps=2) + ["--compile_model"]) == 0
    assert "compile           default (per block + loss)" in capsys.readouterr().out  # auto: no CUDA graphs on CPU
    assert read_toml(tmp_path / "run" / "config.toml")["train"]["compile_mode"] == "auto"
    state = load_checkpoint(tmp_path / "run")
    assert state["config"]["train"]["compile_mode"] == "auto" and state["compile_mode"] == "default"


def test_accumulation_under_cuda_graphs_sums_what_plain_accumulation_sums(tmp_path, monkeypatch):
    """Under CUDA graphs each micro-batch's gradients are moved into buffers of our own before the next replay;
    the step must see the same gradients as plain accumulation into .grad (the path forced here on CPU)."""
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)
    cfg = ModelConfig(vocab_size=256, context_length=16, dim=32, n_layers=2, n_heads=2, intermediate_size=64)
    tokens = (np.arange(8192) * 7 % 251).astype(np.uint16)
    results = []
    for graphs in (False, True):
        torch.manual_seed(0)
        trainer = make_trainer(make_config(cfg, batch_size=2, gradient_accumulation_steps=3, max_steps=3), tokens,
                               tmp_path / str(graphs), val_tokens=tokens[:200])
        trainer._cuda_graphs = graphs
        norms = [float(trainer.train_step(1e-3)[1]) for _ in range(2)]  # the second step reuses the buffers
        results.append((norms, [p.detach().clone() for p in trainer.model.parameters()]))
        assert (trainer._grad_sums is not None) == graphs
    (norms, params), (norms_graphs, params_graphs) = results
    assert norms_graphs == pytest.approx(norms, rel=1e-5)
    for a, b in zip(params, params_graphs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tune_kernels_compiles_with_the_modes_options_and_the_tuning(monkeypatch):
    """torch.compile takes a mode or options: a tuned compile must keep what the mode sets (CUDA graphs)."""
    from cs336_basics.training.transforms import TUNED_KERNELS, compile_model

    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: calls.append(kwargs))
    cfg = ModelConfig(vocab_size=256, context_length=16, dim=32, n_layers=2, n_heads=2, intermediate_size=64)
    compile_model(Transformer(cfg), "reduce-overhead")
    assert calls == [dict(fullgraph=True, mode="reduce-overhead")] * 3  # two blocks and the head + loss
    calls.clear()
    compile_model(Transformer(cfg), "reduce-overhead", tune_kernels=True)
    assert calls == [dict(fullgraph=True, options={"triton.cudagraphs": True, **TUNED_KERNELS})] * 3
    calls.clear()
    compile_model(Transformer(cfg), "default", tune_kernels=True)
    assert calls[0]["options"] == TUNED_KERNELS and TUNED_KERNELS["coordinate_descent_tuning"]


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # CPU autocast leaves rms_norm mixed
def test_bf16_residual_stream_keeps_the_blocks_inputs_in_bf16_under_autocast():
    """cast_residual_stream: the embedding's output, so every block's input and sum, in bf16 under autocast
    (float32 otherwise: the float32 embedding plus bf16 block outputs); the loss stays close to float32's."""
    from cs336_basics.training.transforms import cast_residual_stream

    cfg = ModelConfig(vocab_size=64, context_length=16, dim=32, n_layers=2, n_heads=2, intermediate_size=64)
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    results = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = Transformer(cfg)
        if bf16:
            cast_residual_stream(model)
        seen = []
        for block in model.layers:
            block.register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
        with torch.autocast("cpu", torch.bfloat16):
            loss = model(idx, idx)
        loss.backward()
        dtype = torch.bfloat16 if bf16 else torch.float32
        assert seen == [(dtype, dtype)] * cfg.n_layers
        results[bf16] = float(loss.detach())
    assert results[True] == pytest.approx(results[False], rel=2e-2)


def test_residual_dtype_is_what_the_run_trains_with():
    """auto: bf16 on CUDA (bf16 autocast), float32 on CPU. One device: as asked (bf16 needs CUDA autocast). Under
    FSDP on CUDA the parameters compute in bf16 and each block's input is cast to bf16, so the stream is bf16:
    recorded as such, and fp32 set explicitly is refused."""
    from cs336_basics.training.transforms import resolve_residual_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_residual_dtype("auto", cuda, sharded=False, asked=False) == "bf16"
    assert resolve_residual_dtype("auto", cuda, sharded=True, asked=False) == "bf16"
    assert resolve_residual_dtype("auto", cpu, sharded=False, asked=False) == "fp32"
    assert resolve_residual_dtype("auto", cpu, sharded=True, asked=True) == "fp32"
    assert resolve_residual_dtype("fp32", cpu, sharded=False, asked=False) == "fp32"
    assert resolve_residual_dtype("bf16", cuda, sharded=False, asked=True) == "bf16"
    assert resolve_residual_dtype("fp32", cuda, sharded=False, asked=True) == "fp32"
    assert resolve_residual_dtype("fp32", cuda, sharded=True, asked=False) == "bf16"  # e.g. resumed, under FSDP
    assert resolve_residual_dtype("fp32", cpu, sharded=True, asked=True) == "fp32"  # gloo on CPU: float32 throughout
    with pytest.raises(UserError, match="drop train.residual_dtype=fp32"):
        resolve_residual_dtype("fp32", cuda, sharded=True, asked=True)
    with pytest.raises(UserError, match="CUDA GPUs only"):
        resolve_residual_dtype("bf16", cpu, sharded=False, asked=True)


def test_an_evaluation_reports_the_train_loss_of_its_step(tmp_path, cli_data, capsys):
    """An evaluation at a step that is not a logging step still says that step's training loss, not nan."""
    corpus, cache = cli_data
    assert train([*TEST_FLAGS, "--train_data", corpus, "--set", f"data.cache_dir={cache}", "--out_dir", tmp_path / "run",
                  "--max_steps", 3, "--batch_size", 2, "--eval_interval", 2, "--set", "train.eval_steps=1",
                  "--set", "train.log_interval=10", "--set", "run.sample_tokens=0"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step 2:"))
    assert "train loss nan" not in line and re.match(r"step 2: train loss \d+\.\d+, val loss", line), line


def test_validation_reports_bits_per_byte_from_the_bytes_each_token_stands_for(tmp_path):
    """Bits per byte = the validation windows' summed nats / ln 2 / the bytes of their target tokens: with every
    token standing for 3 bytes that is val loss / (3 ln 2); without byte counts there is no such figure."""
    from cs336_basics.training.trainer import Trainer

    config = make_config(batch_size=2, eval_steps=2)
    tokens = (np.arange(4096, dtype=np.uint32) * 7) % TEST.vocab_size
    trainer = make_trainer(config, tokens, tmp_path)
    assert trainer.evaluate() > 0 and trainer.val_bits_per_byte is None
    trainer = Trainer(trainer.prepared, trainer.config, trainer.train_data, tokens, CPU, tmp_path, log=quiet,
                      token_bytes=np.full(TEST.vocab_size, 3))
    val_loss = trainer.evaluate()
    assert trainer.val_bits_per_byte == pytest.approx(val_loss / (3 * math.log(2)), rel=1e-9)
    sizes = np.arange(TEST.vocab_size) % 4 + 1  # 1 to 4 bytes, as a byte-level vocabulary has
    trainer = Trainer(trainer.prepared, trainer.config, trainer.train_data, tokens, CPU, tmp_path, log=quiet,
                      token_bytes=sizes)
    val_loss = trainer.evaluate()
    T = TEST.context_length
    targets = np.stack([tokens[w * T + 1: w * T + T + 1] for w in range(4)])  # the 2 x 2 windows evaluated
    assert trainer.val_bits_per_byte == pytest.approx(val_loss * targets.size / math.log(2) / sizes[targets].sum(),
                                                      rel=1e-9)
