"""Float8 training on CPU (emulated numerics): the conversion and its report, prepare_model's order and its
converters, the Trainer's hooks (delayed scales calibrated, folded, checkpointed), checkpoints across float8
and bf16, the delayed recipe's settings (kernel casts, fused SwiGLU, merged w1 | w3, weight cache, fast
accumulation, margin) through the config and the CLI, and the configuration summary's verdicts."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from cs336_basics.config import Config, Fp8Config, read_toml
from cs336_basics.errors import UserError
from cs336_basics.model.transformer import ModelConfig, OutputHead, Transformer
from cs336_basics.precision.converters import Bf16WeightCacheConverter, Float8Converter
from cs336_basics.precision.fp8 import check_fp8_device, convert_model_to_fp8, float8_config, is_float8_model, linear_shapes
from cs336_basics.precision.fp8_delayed import Float8DelayedLinear
from cs336_basics.precision.fp8_head import Float8OutputHead
from cs336_basics.precision.swiglu_fp8 import Float8DelayedSwiGLU
from cs336_basics.training.prepare import PreparedModel, bf16_weight_cache_applies, prepare_model, resolve_config
from cs336_basics.training.summary import format_summary, verdict, warnings_for
from conftest import CPU, broken_swiglu_kernels, fp8_config, make_config, make_trainer, prepared_model

CFG = ModelConfig(vocab_size=512, context_length=32, dim=64, n_layers=2, n_heads=4, intermediate_size=128)
# A smaller model for the compiled runs: two blocks of width 32, 16-token windows
SMALL = ModelConfig(vocab_size=256, context_length=16, dim=32, n_layers=2, n_heads=2, intermediate_size=64)


def float8_fqns(model):
    return {n for n, m in model.named_modules() if type(m).__name__ == "Float8Linear"}


def converter(prepared: PreparedModel) -> Float8Converter:
    (fp8,) = [c for c in prepared.converters if isinstance(c, Float8Converter)]
    return fp8


def periodic_tokens(n: int = 8192, period: int = 251) -> np.ndarray:
    return (np.arange(n) * 7 % period).astype(np.uint16)


# ----------------------------------------------------------------------------------------- conversion
def test_conversion_counts_and_skips_head():
    model = Transformer(CFG)
    report = convert_model_to_fp8(model, emulate=True)
    assert report.total == 11 and len(report.converted) == 10
    assert report.skipped == {"output.proj": "output head"}
    assert float8_fqns(model) == set(report.converted)
    assert "converted 10 of 11 linear layers" in report.summary() and "output.proj" in report.summary()


def test_dimensions_not_divisible_by_16_are_kept():
    cfg = replace(CFG, intermediate_size=136)
    model = Transformer(cfg)
    report = convert_model_to_fp8(model, emulate=True)
    kept = {f for f, why in report.skipped.items() if why == "dimension not divisible by 16"}
    assert kept == {f"layers.{i}.ffn.{w}" for i in range(2) for w in ("w1", "w3", "w2")}  # 136 % 16 = 8
    assert len(report.converted) == 4  # qkv and out of each block


def test_auto_filter_keeps_layers_measured_slower():
    model = Transformer(CFG)
    shapes = linear_shapes(model)
    assert shapes == [(64, 64), (64, 128), (64, 192), (128, 64)]
    speedups = {(64, 64): 0.7, (64, 128): 1.3, (64, 192): 1.0, (128, 64): 1.2}
    report = convert_model_to_fp8(model, emulate=True, fp8_speedup=speedups)
    assert sorted(report.converted) == sorted(f"layers.{i}.ffn.{w}" for i in range(2) for w in ("w1", "w3", "w2"))
    assert sum(why == "measured slower in fp8" for why in report.skipped.values()) == 4  # qkv (1.0x) and out


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "rowwise_with_gw_hp"])
def test_recipes(recipe):
    config = float8_config(recipe, emulate=True)
    assert config.emulate
    model = Transformer(CFG)
    convert_model_to_fp8(model, recipe, emulate=True)
    idx = torch.randint(0, CFG.vocab_size, (2, 16))
    loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and model.layers[0].attn.qkv.weight.grad is not None


def test_unknown_recipe_and_devices_without_fp8():
    with pytest.raises(UserError, match="not one of"):
        float8_config("blockwise", emulate=True)
    with pytest.raises(UserError, match="fp8.recipe must be one of"):
        Fp8Config(enabled=True, recipe="blockwise").validate()
    with pytest.raises(UserError, match="compute capability >= 8.9"):
        check_fp8_device(torch.device("cpu"), emulate=False)
    check_fp8_device(torch.device("cpu"), emulate=True)  # emulation works anywhere
    with pytest.raises(ValueError, match="resolve the fp8 config first"):
        Float8Converter(Fp8Config(enabled=True), CPU)


# ----------------------------------------------------------------------------- the config's float8 settings
def test_auto_recipe_resolves_to_what_runs_and_delayed_only_settings_resolve_off_elsewhere():
    """auto: delayed (under torchrun too), tensorwise with the auto filter; under FSDP the delayed recipe keeps no
    weight cache and no merged w1/w3 (each weight is all-gathered in float8 with its own scale); a TorchAO recipe turns the delayed layers' settings off (kernel casts
    none, no fused SwiGLU, no weight cache, ...), and refuses them only when they were set explicitly to something
    other than off."""
    on = Fp8Config(enabled=True)
    assert on.resolve().recipe == "delayed"
    assert on.resolve(sharded=True).recipe == "delayed"
    assert replace(on, filter="auto").resolve().recipe == "tensorwise"
    delayed = on.resolve()
    assert (delayed.kernel_casts, delayed.fused_swiglu, delayed.merge_w13, delayed.weight_cache, delayed.fast_accum) == (
        "all", True, True, True, True)
    sharded = on.resolve(sharded=True)  # FSDP all-gathers each weight in float8 with its own scale instead
    assert (sharded.kernel_casts, sharded.fused_swiglu, sharded.merge_w13, sharded.weight_cache) == ("all", True, False, False)
    for key in ("weight_cache", "merge_w13"):
        with pytest.raises(UserError, match=f"fp8.{key} .* under FSDP each weight is all-gathered in float8"):
            on.resolve(True, frozenset({f"fp8.{key}"}))
    tensorwise = replace(on, recipe="tensorwise").resolve()
    assert {k: getattr(tensorwise, k) for k in Fp8Config.DELAYED_ONLY_OFF} == Fp8Config.DELAYED_ONLY_OFF
    # set to their off values explicitly: nothing to refuse
    assert replace(on, recipe="tensorwise", fused_swiglu=False).resolve(False, frozenset({"fp8.fused_swiglu"})).recipe == "tensorwise"
    for key, value in (("fused_swiglu", True), ("merge_w13", True), ("kernel_casts", "all"), ("fast_accum", True),
                       ("weight_cache", True), ("margin", 1)):
        with pytest.raises(UserError, match=f"fp8.{key} set the delayed recipe's layers, not tensorwise's"):
            replace(on, recipe="tensorwise", **{key: value}).resolve(False, frozenset({f"fp8.{key}"}))
    with pytest.raises(UserError, match="fp8.filter auto times TorchAO's layers"):
        replace(on, recipe="delayed", filter="auto").resolve(False)
    # float8 off: its settings given explicitly are errors, the recipe alone is not
    assert Fp8Config(recipe="tensorwise").resolve(False, frozenset({"fp8.recipe"})) == Fp8Config(recipe="tensorwise")
    with pytest.raises(UserError, match="fp8.margin only apply to float8 training"):
        Fp8Config(margin=1).resolve(False, frozenset({"fp8.margin"}))


# --------------------------------------------------------------------------------------- prepare_model
def test_prepare_model_converts_then_checkpoints_then_compiles_then_shards(monkeypatch):
    """The order of prepare_model: float8 conversion (with its report and mode message) before activation
    checkpointing, then torch.compile of the training and the plain evaluation model, then FSDP last."""
    import cs336_basics.training.prepare as prepare_module
    from cs336_basics.training.distributed import DistributedContext

    order = []

    def spy(name):
        real = getattr(prepare_module, name)

        def wrapped(model, *args, **kwargs):
            order.append((name, is_float8_model(model)))
            return None if name == "apply_fsdp" else real(model, *args, **kwargs)
        monkeypatch.setattr(prepare_module, name, wrapped)

    for name in ("apply_activation_checkpointing", "compile_model", "apply_fsdp"):
        spy(name)
    logs = []
    config = resolve_config(make_config(CFG, fp8_config("tensorwise"), compile_model=True, gradient_checkpointing=True),
                            CPU)
    prepared = prepare_model(config, CPU, log=logs.append)
    assert logs[-1] == Float8Converter.MODE_MESSAGE and "converted 10 of 11 linear layers to Float8Linear" in logs[-2]
    # conversion happened before both transformations, and the eval model (a plain view) is compiled after them
    assert order == [("apply_activation_checkpointing", True), ("compile_model", True), ("compile_model", False)]
    assert is_float8_model(prepared.model) and not is_float8_model(prepared.eval_model)
    assert all(block._compiled_call_impl is not None for block in prepared.model.layers)
    assert prepared.compile_mode == "default" and prepared.fp8 and prepared.residual_dtype == "fp32"
    shared = {n: p.data_ptr() for n, p in prepared.eval_model.named_parameters()}  # a view sharing the weights
    assert shared == {n.replace("._checkpoint_wrapped_module", ""): p.data_ptr()
                      for n, p in prepared.model.named_parameters()}

    order.clear()  # under torchrun (here a pretend world of two): sharded last, and evaluated with its own model
    sharded = prepare_model(resolve_config(config, CPU, "fsdp"), CPU, DistributedContext(0, 2, launched=True),
                            log=lambda s: None)
    assert [name for name, _ in order] == ["apply_activation_checkpointing", "compile_model", "apply_fsdp"]
    assert sharded.eval_model is sharded.model


def test_prepare_model_reports_the_delayed_conversion_and_its_checks():
    logs = []
    prepared = prepared_model(make_config(CFG, fp8_config(), batch_size=2), log=logs.append)
    text = "\n".join(logs)
    assert logs[-1].startswith(Float8Converter.DELAYED_MODE_MESSAGE) and "once per optimizer step" in logs[-1]
    assert "converted 10 of 11 linear layers to Float8DelayedLinear" in text
    assert "output.proj and its cross-entropy: float8" in text and "2 SwiGLU blocks: one function each" in text
    assert "fp8 cast kernel checked at 64 tokens" in text and "fused SwiGLU kernels checked at 64 tokens x 128" in text
    assert prepared.fp8_head and prepared.fp8_report.kernels_checked == "64 tokens x 128"
    assert converter(prepared).scales is not None and not converter(prepared).scales.calibrated
    bf16 = prepared_model(make_config(CFG))
    assert bf16.converters == [] and bf16.fp8_report is None and bf16.eval_model is bf16.model  # CPU: float32, no view


def test_emulated_fp8_training_lowers_loss(tmp_path):
    torch.manual_seed(0)
    tokens = (torch.arange(8192) % 61).numpy().astype("uint16")  # a learnable periodic sequence
    trainer = make_trainer(make_config(CFG, fp8_config("tensorwise"), batch_size=8, max_steps=40, warmup_steps=2),
                           tokens, tmp_path)
    losses = [trainer.train_step(3e-3)[0].item() for _ in range(40)]
    assert losses[-1] < losses[0] - 2.0


def test_fp8_and_bf16_checkpoints_load_into_each_other(tmp_path):
    """Float8 models hold plain tensors: their state dicts load into a plain model and back; a float8 run's
    checkpoint resumes in bf16 and a bf16 one in float8 (whose delayed scales then calibrate afresh), and the fp8
    model computes nearly what the plain one computes from the same weights."""
    torch.manual_seed(0)
    fp8_model = prepared_model(make_config(CFG, fp8_config())).model
    state = fp8_model.state_dict()
    assert all(type(t) is torch.Tensor for t in state.values())  # plain tensors, no float8 subclasses
    plain = Transformer(CFG)
    plain.load_state_dict(state)
    back = prepared_model(make_config(CFG, fp8_config("tensorwise"))).model
    back.load_state_dict(plain.state_dict())
    for name, tensor in back.state_dict().items():
        torch.testing.assert_close(tensor, state[name])
    idx = torch.randint(0, CFG.vocab_size, (2, 16))
    rel = (back(idx, idx) - plain(idx, idx)).abs() / plain(idx, idx)
    assert rel < 0.02

    tokens = periodic_tokens(4096, 509)
    fp8 = make_trainer(make_config(CFG, fp8_config(), batch_size=2), tokens, tmp_path / "fp8")
    for _ in range(2):
        fp8.train_step(1e-3)
    fp8.step = 2
    saved = fp8.state_dict()
    assert saved["converter_names"] == ["Float8Converter"] and saved["converters"][0]["history"].shape[0] == 10
    assert saved["config"]["fp8"]["recipe"] == "delayed"  # resolved: what ran, not "auto"
    bf16 = make_trainer(make_config(CFG, batch_size=2), tokens, tmp_path / "bf16")
    bf16.load_state_dict(saved)
    assert bf16.step == 2
    for name, tensor in bf16.model.state_dict().items():
        torch.testing.assert_close(tensor, fp8.model.state_dict()[name], rtol=0, atol=0)
    assert torch.isfinite(bf16.train_step(1e-3)[0])
    bf16.step = 3
    again = make_trainer(make_config(CFG, fp8_config(), batch_size=2), tokens, tmp_path / "again")
    again.load_state_dict(bf16.state_dict())
    assert not converter(again.prepared).scales.calibrated  # nothing to resume: the first step calibrates
    assert torch.isfinite(again.train_step(1e-3)[0]) and converter(again.prepared).scales.calibrated


def test_delayed_scales_resume_from_the_checkpoint_or_recalibrate_when_the_layers_differ(tmp_path):
    tokens = periodic_tokens(4096, 509)
    first = make_trainer(make_config(CFG, fp8_config(), batch_size=2), tokens, tmp_path / "a")
    for _ in range(3):
        first.train_step(1e-3)
    saved = first.state_dict()
    same = make_trainer(make_config(CFG, fp8_config(), batch_size=2), tokens, tmp_path / "b")
    same.load_state_dict(saved)
    scales = converter(same.prepared).scales
    assert scales.calibrated and torch.equal(scales.scales(), converter(first.prepared).scales.scales())
    logs = []  # a history of other float8 layers (another shape): the first step calibrates afresh
    other = make_trainer(make_config(CFG, fp8_config(), batch_size=2), tokens, tmp_path / "c", log=logs.append)
    other.load_state_dict({**saved, "converters": [{"history": saved["converters"][0]["history"][:5]}]})
    assert not converter(other.prepared).scales.calibrated
    assert any("fp8 delayed scaling: not resumed" in line and "recalibrating" in line for line in logs)


# -------------------------------------------------------------------------------- the Trainer's hooks
def test_trainer_folds_gradient_amaxes_between_micro_batches(tmp_path, monkeypatch):
    torch.manual_seed(0)
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, 4096).astype(np.uint32)
    trainer = make_trainer(make_config(CFG, fp8_config(), batch_size=2, gradient_accumulation_steps=3, max_steps=1,
                                       warmup_steps=0), tokens, tmp_path, val_tokens=tokens[:512])
    trainer._prepare_hooks()
    calls = []
    monkeypatch.setattr(converter(trainer.prepared).scales, "after_backward", lambda: calls.append(1))
    trainer.train_step(1e-3)
    assert len(calls) == 3  # between the three micro-batches (2), then update() folds the last one


def test_trainer_calibrates_on_the_first_batch_without_moving_the_data_stream(tmp_path):
    from cs336_basics.data.batches import RandomWindows

    torch.manual_seed(0)
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, 4096).astype(np.uint32)
    trainer = make_trainer(make_config(CFG, fp8_config(), batch_size=4, max_steps=3), tokens, tmp_path,
                           val_tokens=tokens[:512])
    scales = converter(trainer.prepared).scales
    assert scales is not None and not scales.calibrated
    before = RandomWindows(tokens, 4, CFG.context_length, seed=0).next_batch(CPU)
    trainer._prepare_hooks()
    assert scales.calibrated and all(p.grad is None for p in trainer.model.parameters())
    after = trainer.train_data.next_batch(CPU)
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # the first step still draws the first batch
    assert (scales.scales() != 1).all()  # every layer learned its scales


def test_trainer_logs_fp8_saturation_and_the_margin_reaches_the_scales(tmp_path):
    """Each log record of a delayed-fp8 run counts its clipped casts (metrics.jsonl, summary); fp8.margin reaches
    the scales."""
    tokens = np.arange(4096, dtype=np.uint16) % 509
    run = make_trainer(make_config(CFG, fp8_config(margin=1), batch_size=2, max_steps=4, log_interval=2, eval_interval=4),
                       tokens, tmp_path)
    assert converter(run.prepared).scales.margin == 1
    summary = run.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert [r["step"] for r in logged] == [2, 4]
    assert all(isinstance(r["fp8_saturated"], int) and r["fp8_overflow"] >= 0 for r in logged)
    assert summary["fp8_saturated"] == sum(r["fp8_saturated"] for r in logged)


# ------------------------------------------------------------------------------------------ kernel casts
def test_a_run_checks_the_cast_kernel_at_its_shapes_and_refuses_a_wrong_one(monkeypatch):
    """With kernel casts, prepare_model checks the cast at every (tokens x width, format) the layers will cast before
    training, and refuses a kernel whose transposed copy is wrong (as ours once was on the GPU)."""
    from cs336_basics.precision import fp8_cast

    seen = []
    prepared_model(make_config(SMALL, fp8_config(kernel_casts="inputs"), batch_size=2), log=seen.append)
    assert "fp8 cast kernel checked at 32 tokens x 32 (e4m3), 64 (e4m3): both layouts" in " ".join(seen)
    seen.clear()
    prepared_model(make_config(SMALL, fp8_config(kernel_casts="all"), batch_size=2), log=seen.append)
    assert "x 32 (e4m3), 32 (e5m2), 64 (e4m3), 64 (e5m2), 96 (e5m2)" in " ".join(seen)  # qkv's output is 3 x 32 wide
    right = fp8_cast.cast_both

    def transposed_wrong(x, scale, e5m2, config=None):
        q, qt, amax = right(x, scale, e5m2)
        return q, qt.view(torch.uint8).flip(1).view(qt.dtype), amax

    monkeypatch.setattr(fp8_cast, "cast_both", transposed_wrong)
    with pytest.raises(UserError, match=r"cast kernel computed wrong results .*cast e4m3 32 x 32 output 0: the transposed"
                                        r".*--set fp8.kernel_casts=none"):
        prepared_model(make_config(SMALL, fp8_config(kernel_casts="all"), batch_size=2))


def test_kernel_casts_option_trains_compiled_as_without(tmp_path):
    with pytest.raises(ValueError, match="kernel_casts must be one of"):
        Float8DelayedLinear(torch.nn.Linear(16, 16, bias=False), emulate=True, kernel_casts="some")
    with pytest.raises(UserError, match="fp8.kernel_casts must be one of none, inputs, grads, all, got 'x'"):
        prepared_model(make_config(SMALL, fp8_config(kernel_casts="x")))
    with pytest.raises(UserError, match="fp8.kernel_casts set the delayed recipe's layers"):
        prepared_model(make_config(SMALL, fp8_config("tensorwise", kernel_casts="all")),
                       explicit=frozenset({"fp8.kernel_casts"}))
    tokens = periodic_tokens()
    losses = {}
    # each choice eager, and the two ends compiled (the cast as an opaque op in the graph, or inductor's casts)
    for kernel_casts, compiled in (("none", False), ("inputs", False), ("grads", False), ("all", False),
                                   ("none", True), ("all", True)):
        torch.manual_seed(0)
        trainer = make_trainer(make_config(SMALL, fp8_config(kernel_casts=kernel_casts), batch_size=2, max_steps=4,
                                           compile_model=compiled), tokens, tmp_path / f"{kernel_casts}{compiled}",
                               val_tokens=tokens[:200])
        layers = [m for m in trainer.model.modules() if isinstance(m, Float8DelayedLinear)]
        assert layers and all(m.kernel_casts == kernel_casts for m in layers)
        losses[kernel_casts, compiled] = [float(trainer.train_step(1e-3)[0]) for _ in range(4)]
    for kernel_casts, compiled in losses:
        assert losses[kernel_casts, compiled] == pytest.approx(losses["none", compiled], rel=1e-4), (kernel_casts, compiled)


def test_kernel_casts_default_to_all_with_the_delayed_recipe_and_none_with_torchao():
    """The default: every delayed layer's casts through our kernel (the fastest measured), none with TorchAO's
    recipes, whose layers cast themselves; the report names what ran."""
    assert Fp8Config().kernel_casts == "all"
    prepared = prepared_model(make_config(SMALL, fp8_config()))
    layers = [m for m in prepared.model.modules() if isinstance(m, Float8DelayedLinear)]
    assert layers and all(m.kernel_casts == "all" for m in layers) and prepared.fp8_report.kernel_casts == "all"
    assert prepared_model(make_config(SMALL, fp8_config("tensorwise"))).fp8_report.kernel_casts == "none"


# ------------------------------------------------------------------------------------------- the fp8 head
def test_prepare_model_swaps_the_head_and_keeps_state_dict_keys():
    model, report = (lambda p: (p.model, p.fp8_report))(prepared_model(make_config(CFG, fp8_config())))
    assert isinstance(model.output, Float8OutputHead) and report.fp8_head
    assert "output.proj" not in report.skipped and report.total == 11
    assert "cross-entropy: float8" in report.summary()
    assert model.state_dict().keys() == Transformer(CFG).state_dict().keys()
    plain_model = Transformer(CFG)
    plain_model.load_state_dict(model.state_dict())
    h = torch.randn(2, 16, CFG.dim)
    torch.testing.assert_close(model.output(h), plain_model.output(h))  # no targets: the plain projection's logits
    kept = prepared_model(make_config(CFG, fp8_config(head=False)))
    assert type(kept.model.output) is OutputHead and kept.fp8_report.skipped["output.proj"] == "output head"
    assert not kept.fp8_head


def test_head_with_a_vocabulary_not_divisible_by_16_stays_in_bf16():
    prepared = prepared_model(make_config(replace(CFG, vocab_size=500), fp8_config()))
    assert type(prepared.model.output) is OutputHead and not prepared.fp8_report.fp8_head
    assert prepared.fp8_report.skipped == {"output.proj": "dimension not divisible by 16"}


# ------------------------------------------------------------------------------------- the fused SwiGLU
def test_fused_swiglu_compiles_and_calibrates_through_the_layers(tmp_path):
    """Compiled, with activation checkpointing (its forward recomputed in the backward); compiled without
    checkpointing: test_merged_w13_trains_compiled_and_is_recorded."""
    tokens = periodic_tokens()
    losses = {}
    for fused in (False, True):  # w1 and w3 as two products: the same numbers as the layers (merged: below)
        torch.manual_seed(0)
        trainer = make_trainer(make_config(SMALL, fp8_config(fused_swiglu=fused, merge_w13=False), batch_size=2,
                                           max_steps=4, compile_model=True, gradient_checkpointing=True),
                               tokens, tmp_path / str(fused), val_tokens=tokens[:200])
        report = trainer.prepared.fp8_report
        assert sum(isinstance(m, Float8DelayedSwiGLU) for m in trainer.model.modules()) == report.fused_swiglu == 2 * fused
        assert ("2 SwiGLU blocks: one function each" in report.summary()) == fused
        losses[fused] = [float(trainer.train_step(1e-3)[0]) for _ in range(4)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_a_run_checks_the_kernels_at_its_shape_and_refuses_wrong_ones(monkeypatch):
    """prepare_model checks the fused SwiGLU's kernels at the run's shape (micro-batch tokens x SwiGLU width) before
    training; a kernel whose transposed copy is wrong (as the GPU's Triton once made one of ours) or whose values
    are off is refused with a one-line error saying how to train without it."""
    from cs336_basics.precision import swiglu_fp8 as S

    assert S.check_kernels(64, 48, CPU) == []  # on a CPU both sides are the references
    seen = []
    prepared = prepared_model(make_config(SMALL, fp8_config(), batch_size=2), log=seen.append)
    assert "fused SwiGLU kernels checked at 32 tokens x 64" in " ".join(seen)
    assert prepared.fp8_report.kernels_checked == "32 tokens x 64"  # what a bench row records
    for kernel, broken, what in broken_swiglu_kernels():
        with monkeypatch.context() as m:
            m.setattr(S, kernel, broken)
            assert any(p.startswith(what) for p in S.check_kernels(64, 48, CPU))
            with pytest.raises(UserError, match=f"wrong results on this machine at 32 x 64 .*{what}.*train with "
                               r"--set fp8.merge_w13=false \(or fp8.fused_swiglu=false\)"):  # the default merges w1 | w3
                prepared_model(make_config(SMALL, fp8_config(), batch_size=2))


def test_kernel_bench_without_a_gpu_is_a_one_line_error():
    import subprocess
    import sys

    from conftest import ROOT

    if torch.cuda.is_available():
        pytest.skip("the bench runs on this GPU")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_swiglu_fp8.py")], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == "error: kernel_swiglu_fp8.py times a Triton kernel: it needs a CUDA GPU"


def test_fused_swiglu_needs_the_delayed_recipe():
    small = replace(SMALL, n_layers=1)
    prepared = prepared_model(make_config(small, fp8_config("tensorwise")))
    assert prepared.fp8_report.fused_swiglu == 0
    assert not any(isinstance(m, Float8DelayedSwiGLU) for m in prepared.model.modules())
    with pytest.raises(UserError, match="fp8.fused_swiglu set the delayed recipe's layers, not tensorwise's"):
        prepared_model(make_config(small, fp8_config("tensorwise", fused_swiglu=True)),
                       explicit=frozenset({"fp8.fused_swiglu"}))


def test_merged_w13_trains_compiled_and_is_recorded(tmp_path):
    """merge_w13: the fused SwiGLUs run w1 and w3 as one product, the report says so and its kernel check covers
    that layout; compiled training with the weights cast once per step follows the separate products' losses (the
    shared scales round a little differently) and keeps the state-dict keys."""
    tokens = periodic_tokens()
    losses, keys = {}, {}
    for merge in (False, True):
        torch.manual_seed(0)
        trainer = make_trainer(make_config(SMALL, fp8_config(merge_w13=merge), batch_size=2,
                                           gradient_accumulation_steps=2, max_steps=6, compile_model=True),
                               tokens, tmp_path / str(merge), val_tokens=tokens[:200])
        report = trainer.prepared.fp8_report
        assert report.merge_w13 == merge and ("one float8 product each way" in report.summary()) == merge
        assert all(m.merge_w13 == merge for m in trainer.model.modules() if isinstance(m, Float8DelayedSwiGLU))
        keys[merge] = list(trainer.model.state_dict())
        losses[merge] = [float(trainer.train_step(1e-3)[0]) for _ in range(6)]
    assert keys[True] == keys[False]
    assert losses[True] == pytest.approx(losses[False], rel=2e-2) and losses[True][-1] < losses[True][0]


def test_merged_w13_is_the_fused_swiglus_default_and_needs_it():
    """w1 | w3 as one product: on by default wherever the fused SwiGLU runs, off without it (no error); asked for
    explicitly without the fused SwiGLU or with another recipe: refused."""
    small = replace(SMALL, n_layers=1)
    with pytest.raises(UserError, match="fp8.merge_w13 runs the fused SwiGLU's w1 and w3 as one product: it needs "
                                        "fp8.fused_swiglu=true"):
        prepared_model(make_config(small, fp8_config(fused_swiglu=False, merge_w13=True)),
                       explicit=frozenset({"fp8.fused_swiglu", "fp8.merge_w13"}))
    with pytest.raises(UserError, match="fp8.merge_w13 set the delayed recipe's layers"):
        prepared_model(make_config(small, fp8_config("tensorwise", merge_w13=True)), explicit=frozenset({"fp8.merge_w13"}))
    for fp8, merged in ((fp8_config(), True), (fp8_config(fused_swiglu=False), False),
                        (fp8_config("tensorwise"), False), (fp8_config(merge_w13=False), False)):
        assert prepared_model(make_config(small, fp8)).fp8_report.merge_w13 is merged, fp8


# ------------------------------------------------------------------------------------- the weight cache
@pytest.mark.parametrize("fused, compiled, checkpointing", [(False, False, False), (True, False, False),
                                                            (True, False, True), (True, True, True)],
                         ids=["layers-eager", "fused-swiglu-eager", "eager-checkpointed", "compiled-checkpointed"])
def test_weights_cast_once_per_step_train_as_the_per_micro_batch_casts_do(tmp_path, fused, compiled, checkpointing):
    """fp8.weight_cache: the weights cast once per optimizer step (DelayedScaling.cast_weights) and read by
    every micro-batch give the losses and weights of casting them in each forward, over steps whose optimizer
    changes the weights (so a stale cast would show), with gradient accumulation, in the layers one by one and
    the fused SwiGLU, eager and compiled, and with activation checkpointing, whose recomputed forward reads the
    cast again."""
    model = CFG if not compiled else SMALL
    tokens = (np.arange(16384) * 7 % (model.vocab_size - 3)).astype(np.uint16)
    results = {}
    for cache in (False, True):
        torch.manual_seed(0)
        trainer = make_trainer(make_config(model, fp8_config(fused_swiglu=fused, weight_cache=cache), batch_size=2,
                                           gradient_accumulation_steps=2, max_steps=3, warmup_steps=0,
                                           compile_model=compiled, gradient_checkpointing=checkpointing),
                               tokens, tmp_path / str(cache), val_tokens=tokens[:256])
        scales = converter(trainer.prepared).scales
        assert scales.cache_weights == cache
        losses = [float(trainer.train_step(3e-3)[0]) for _ in range(3)]
        results[cache] = losses, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        if cache:  # column-major buffers, not saved in checkpoints (they follow from the weights)
            layer = scales.layers[0]
            assert layer.w8_columns.stride() == (1, layer.out_features)
            assert not any(key.endswith(("w8", "w8_columns", "inv_w")) for key in trainer.model.state_dict())
    (plain_losses, plain_weights), (cached_losses, cached_weights) = results[False], results[True]
    assert cached_losses == pytest.approx(plain_losses, rel=1e-6, abs=0)
    for name, weight in plain_weights.items():
        torch.testing.assert_close(cached_weights[name], weight, rtol=1e-6, atol=0, msg=lambda m: f"{name}: {m}")


def test_weight_cache_and_fast_accumulation_follow_the_recipe():
    """On by default with the delayed recipe's layers, off with TorchAO's; off when set off; asked for explicitly with
    a TorchAO recipe: an error."""
    delayed = prepared_model(make_config(CFG, fp8_config()))
    assert converter(delayed).scales.cache_weights and converter(delayed).config.weight_cache
    layers = [m for m in delayed.model.modules() if isinstance(m, Float8DelayedLinear)]
    assert layers and all(m.fast_accum for m in layers) and delayed.fp8_report.fast_accum
    assert "the layers' forward products: cuBLAS's fast accumulation" in delayed.fp8_report.summary()
    off = prepared_model(make_config(CFG, fp8_config(weight_cache=False, fast_accum=False)))
    assert not converter(off).scales.cache_weights and not off.fp8_report.fast_accum
    assert not any(m.fast_accum for m in off.model.modules() if isinstance(m, Float8DelayedLinear))
    assert "fast accumulation" not in off.fp8_report.summary()
    tensorwise = prepared_model(make_config(CFG, fp8_config("tensorwise")))
    assert converter(tensorwise).scales is None and not converter(tensorwise).config.weight_cache
    assert not tensorwise.fp8_report.fast_accum  # TorchAO's layers choose their own (fast in the forward)
    for key in ("weight_cache", "fast_accum"):
        with pytest.raises(UserError, match=f"fp8.{key} set the delayed recipe's layers.*use --fp8_recipe delayed"):
            prepared_model(make_config(CFG, fp8_config("tensorwise", **{key: True})), explicit=frozenset({f"fp8.{key}"}))


# -------------------------------------------------------------------------- the settings through the CLI
def test_delayed_settings_are_said_recorded_and_kept_on_resume(tmp_path, capsys, tiny_cli):
    """fp8.kernel_casts, fast_accum, weight_cache, merge_w13 and margin given with --set: the configuration summary
    says them, config.toml records them, --resume keeps them; the defaults likewise."""
    train, base = tiny_cli
    fp8 = ["--use_fp8", "--set", "fp8.emulate=true"]
    assert train(base + fp8 + ["--out_dir", tmp_path / "default", "--max_steps", 1]) == 0
    out = capsys.readouterr().out
    assert "fp8 casts of inputs and output gradients: our Triton kernel" in out
    assert "one float8 product each way" in out and "cuBLAS's fast accumulation" in out
    assert "weights cast to float8 once per optimizer step" in out
    saved = read_toml(tmp_path / "default" / "config.toml")["fp8"]
    assert (saved["recipe"], saved["kernel_casts"], saved["merge_w13"], saved["fast_accum"], saved["weight_cache"]) == (
        "delayed", "all", True, True, True)

    changed = ["--set", "fp8.kernel_casts=inputs", "--set", "fp8.merge_w13=false", "--set", "fp8.fast_accum=false",
               "--set", "fp8.weight_cache=false", "--set", "fp8.margin=1"]
    assert train(base + fp8 + changed + ["--out_dir", tmp_path / "run", "--max_steps", 2]) == 0
    out = capsys.readouterr().out
    assert "fp8 casts of the layers' inputs: our Triton kernel" in out and "(fp8.kernel_casts = inputs)" in out
    assert "one float8 product each way" not in out and "fast accumulation" not in out
    assert "once per optimizer step" not in out
    saved = read_toml(tmp_path / "run" / "config.toml")["fp8"]
    assert (saved["kernel_casts"], saved["merge_w13"], saved["fast_accum"], saved["weight_cache"], saved["margin"]) == (
        "inputs", False, False, False, 1)
    assert train(["--resume", tmp_path / "run", "--max_steps", 3]) == 0
    out = capsys.readouterr().out  # the run's choices, not the defaults
    assert "(fp8.kernel_casts = inputs)" in out and "one float8 product each way" not in out
    assert "fast accumulation" not in out and "once per optimizer step" not in out
    assert read_toml(tmp_path / "run" / "config.toml")["fp8"] == saved | {"margin": 1}

    assert train(base + fp8 + ["--out_dir", tmp_path / "unfused", "--max_steps", 1,
                               "--set", "fp8.fused_swiglu=false"]) == 0  # merge_w13 follows it off, no error
    assert "one float8 product each way" not in capsys.readouterr().out
    assert read_toml(tmp_path / "unfused" / "config.toml")["fp8"]["merge_w13"] is False


@pytest.mark.parametrize("extra, message", [
    (["--set", "fp8.kernel_casts=all"], "fp8.kernel_casts only apply to float8 training: add --use_fp8"),
    (["--set", "fp8.margin=1"], "fp8.margin only apply to float8 training"),
    (["--set", "fp8.merge_w13=true"], "fp8.merge_w13 only apply to float8 training"),
    (["--set", "fp8.fast_accum=true", "--set", "fp8.weight_cache=false"], "fp8.fast_accum, fp8.weight_cache only apply"),
    (["--use_fp8", "--set", "fp8.emulate=true", "--fp8_recipe", "tensorwise", "--set", "fp8.kernel_casts=all"],
     "fp8.kernel_casts set the delayed recipe's layers, not tensorwise's"),
    (["--use_fp8", "--set", "fp8.emulate=true", "--fp8_recipe", "tensorwise", "--set", "fp8.margin=1"],
     "fp8.margin set the delayed recipe's layers"),
    (["--use_fp8", "--set", "fp8.emulate=true", "--set", "fp8.fused_swiglu=false", "--set", "fp8.merge_w13=true"],
     "it needs fp8.fused_swiglu=true"),
])
def test_delayed_settings_where_they_cannot_apply_are_one_line_errors(tmp_path, capsys, tiny_cli, extra, message):
    from conftest import one_line_error

    train, base = tiny_cli
    one_line_error(capsys, train(base + ["--out_dir", tmp_path / "refused", "--max_steps", 1, *extra]), message)
    assert not (tmp_path / "refused").exists()  # refused before the run directory was made


# --------------------------------------------------------------------------------------- bf16 weight cache
def test_bf16_cache_is_on_where_it_applies_and_refused_elsewhere():
    """On for bf16 on GPUs with whole weights (one process, DDP), off for float8, CPU (float32, no autocast) and
    FSDP; set off: off; set on explicitly where it does not apply: an error, not ignored."""
    from cs336_basics.precision.bf16_cache import Bf16WeightCache

    cuda = torch.device("cuda")
    bf16, fp8 = make_config(CFG), make_config(CFG, Fp8Config(enabled=True))
    assert bf16_weight_cache_applies(bf16, cuda, None) and bf16_weight_cache_applies(bf16, cuda, "ddp")
    for config, device, parallelism in ((fp8, cuda, None), (bf16, CPU, None), (bf16, cuda, "fsdp"), (bf16, cuda, "hsdp")):
        assert not bf16_weight_cache_applies(config, device, parallelism)
    assert prepared_model(bf16).converters == []  # CPU: nothing to cache
    with pytest.raises(UserError, match="train.bf16_weight_cache applies to bf16 training on GPUs with whole weights"):
        resolve_config(bf16, CPU, None, frozenset({"train.bf16_weight_cache"}))
    resolve_config(replace(bf16, train=replace(bf16.train, bf16_weight_cache=False)), CPU, None,
                   frozenset({"train.bf16_weight_cache"}))  # set off: fine anywhere
    with pytest.raises(ValueError, match="no CachedCastLinear"):
        Bf16WeightCache(Transformer(CFG))
    logs = []  # the converter itself, as prepare_model applies it on a GPU
    model = Transformer(CFG)
    cache = Bf16WeightCacheConverter(logs.append)
    cache.convert(model)
    assert logs == ["bf16 weights of 11 linear layers cast once per optimizer step"]
    cache.before_step()


# ------------------------------------------------------------------------------ the configuration summary
def gpu_config(fp8: bool = True, compiled: bool = True, checkpointing: bool = False, **fp8_fields) -> Config:
    seed = Config()
    return replace(seed, fp8=Fp8Config(enabled=fp8, **fp8_fields),
                   train=replace(seed.train, batch_size=16, gradient_accumulation_steps=8, compile_model=compiled,
                                 use_flash_attn=True, gradient_checkpointing=checkpointing))


def test_verdicts(monkeypatch):
    monkeypatch.setattr("cs336_basics.training.summary.supports_fp8", lambda device: True)
    cuda = torch.device("cuda")
    assert verdict(gpu_config(), cuda, "FLASH_ATTENTION") == ("OPTIMAL CONFIGURATION: FP8 + Compilation", [])
    head, reasons = verdict(gpu_config(compiled=False), cuda, "FLASH_ATTENTION")
    assert head == "SUBOPTIMAL CONFIGURATION"
    assert any("FP8 without --compile_model runs SLOWER than BF16" in r for r in reasons)
    head, reasons = verdict(gpu_config(checkpointing=True), cuda, "FLASH_ATTENTION")
    assert any("gradient checkpointing" in r for r in reasons)
    head, reasons = verdict(gpu_config(fp8=False), cuda, "FLASH_ATTENTION")
    assert any("add --use_fp8" in r for r in reasons)
    head, reasons = verdict(gpu_config(), cuda, "MATH")
    assert any("--use_flash_attn" in r for r in reasons)
    assert verdict(gpu_config(), CPU, "MATH")[0] == "CPU RUN"
    monkeypatch.setattr("cs336_basics.training.summary.supports_fp8", lambda device: False)
    assert verdict(gpu_config(fp8=False), cuda, "FLASH_ATTENTION") == ("OPTIMAL CONFIGURATION: BF16 + Compilation", [])


def test_loud_warnings_for_the_configurations_that_cost_a_lot():
    cuda = torch.device("cuda")
    eager = warnings_for(gpu_config(compiled=False), cuda)
    assert len(eager) == 1 and eager[0].startswith("WARNING: FP8 without --compile_model runs SLOWER than BF16")
    checkpointing = warnings_for(gpu_config(checkpointing=True), cuda)
    assert len(checkpointing) == 1 and "gradient checkpointing is on with FP8" in checkpointing[0]
    assert warnings_for(gpu_config(), cuda) == [] and warnings_for(gpu_config(fp8=False, compiled=False), cuda) == []
    assert warnings_for(gpu_config(compiled=False, emulate=True, checkpointing=True), CPU) == []  # emulated on a CPU


def test_summary_has_tokens_per_step_and_roofline(monkeypatch):
    from cs336_basics.perf.hardware import lookup_peaks

    monkeypatch.setattr("cs336_basics.training.summary.supports_fp8", lambda device: True)
    monkeypatch.setattr("torch.cuda.get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    config = gpu_config(recipe="delayed")
    with torch.device("meta"):
        model = Transformer(config.model)

    def summary(compile_mode="default", residual="fp32", tuned=False, peaks=lookup_peaks("NVIDIA H100 80GB HBM3")):
        c = replace(config, train=replace(config.train, tune_kernels=tuned))
        return format_summary(c, PreparedModel(model, model, [], compile_mode, residual), torch.device("cuda"), 1,
                              "FLASH_ATTENTION", peaks)

    text = summary()
    assert "398.5M parameters" in text and "dim 896, 24 layers, 14 heads, SwiGLU 3584, vocab 50304" in text
    assert "16 micro-batch x 8 accumulation x 1024 context = 131,072" in text
    assert "FP8 (delayed) + bf16 autocast" in text and "OPTIMAL CONFIGURATION: FP8 + Compilation" in text
    assert "Expected: at most" in text and "upper bound" in text and "fp8 /" in text
    assert "residual stream   fp32\n" in text  # a bf16 stream says evaluation keeps float32:
    assert "residual stream   bf16 while training (evaluation float32)" in summary(residual="bf16")
    graphs = summary("reduce-overhead", tuned=True)
    assert "reduce-overhead (per block + loss, replayed as CUDA graphs, kernels tuned" in graphs
    assert "no datasheet peaks known for this GPU" in summary(peaks=None)
