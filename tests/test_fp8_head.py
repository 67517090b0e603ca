"""The float8 output head + cross-entropy (precision/fp8_head.py) against the plain bf16/fp32 head, on CPU:
emulated fp8 numerics, the real `torch._scaled_mm` CPU kernel, and the compiled graph the GPU runs."""

import pytest
import torch
import torch.nn.functional as F

from cs336_basics.errors import UserError
from cs336_basics.model.transformer import ModelConfig, OutputHead, Transformer
from cs336_basics.precision.fp8_head import Float8OutputHead, linear_cross_entropy_fp8
from cs336_basics.training.setup import Fp8Options, build_model

CFG = ModelConfig(vocab_size=512, context_length=32, dim=64, n_layers=2, n_heads=4, intermediate_size=128)


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - test).pow(2).sum()))


def loss_and_grads(fn, x, w, t, grad_loss=1.0):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = fn(x, w, t)
    loss.backward(torch.tensor(grad_loss))
    return loss.detach(), x.grad, w.grad


def plain(x, w, t):
    return F.cross_entropy(x @ w.t(), t)


def inputs(n=256, d=64, v=512, w_std=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(v, d, generator=g) * w_std, torch.randint(0, v, (n,), generator=g)


@pytest.mark.parametrize("w_std", [0.02, 0.5])  # near-uniform predictions, and confident ones
def test_loss_and_gradients_match_the_plain_head(w_std):
    x, w, t = inputs(w_std=w_std)
    ref_loss, ref_gx, ref_gw = loss_and_grads(plain, x, w, t, grad_loss=0.25)  # as with gradient accumulation
    loss, gx, gw = loss_and_grads(lambda *a: linear_cross_entropy_fp8(*a, emulate=True), x, w, t, grad_loss=0.25)
    assert abs(loss - ref_loss) / ref_loss < 2e-3
    # e4m3 inputs (3 mantissa bits) and an e5m2 gradient (2 bits): TorchAO's float8 linears reach ~20-30 dB
    assert sqnr_db(ref_gx, gx) > 25 and sqnr_db(ref_gw, gw) > 25
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all()


def test_static_gradient_scale_cannot_overflow():
    x, w, t = inputs(w_std=50.0)  # logits in the thousands: softmax is one-hot, softmax - onehot is exactly +-1
    loss, gx, gw = loss_and_grads(lambda *a: linear_cross_entropy_fp8(*a, emulate=True), x, w, t)
    assert torch.isfinite(loss) and torch.isfinite(gx).all() and torch.isfinite(gw).all()
    # every entry of (softmax - onehot) / n is at most 1/n, so no entry of grad_x exceeds max|w| * 2 / n * n_classes
    assert 0 < gx.abs().max() <= 2 * w.abs().max() and gw.abs().max() <= x.abs().max() * 1.01


def test_emulation_is_what_the_fp8_kernel_computes():
    x, w, t = inputs()
    emulated = loss_and_grads(lambda *a: linear_cross_entropy_fp8(*a, emulate=True), x, w, t)
    kernel = loss_and_grads(lambda *a: linear_cross_entropy_fp8(*a, emulate=False), x, w, t)  # torch._scaled_mm on CPU
    for a, b in zip(emulated, kernel):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-5)


def test_build_model_swaps_the_head_and_keeps_state_dict_keys():
    model, report = build_model(CFG, torch.device("cpu"), Fp8Options(emulate=True))
    assert isinstance(model.output, Float8OutputHead) and report.fp8_head
    assert "output.proj" not in report.skipped and report.total == 11
    assert "cross-entropy: float8" in report.summary()
    assert model.state_dict().keys() == Transformer(CFG).state_dict().keys()
    plain_model = Transformer(CFG)
    plain_model.load_state_dict(model.state_dict())
    h = torch.randn(2, 16, CFG.dim)
    torch.testing.assert_close(model.output(h), plain_model.output(h))  # no targets: the plain projection's logits
    kept, report = build_model(CFG, torch.device("cpu"), Fp8Options(emulate=True, head=False))
    assert type(kept.output) is OutputHead and report.skipped["output.proj"] == "output head"


def test_head_with_a_vocabulary_not_divisible_by_16_stays_in_bf16():
    from dataclasses import replace

    model, report = build_model(replace(CFG, vocab_size=500), torch.device("cpu"), Fp8Options(emulate=True))
    assert type(model.output) is OutputHead and not report.fp8_head
    assert report.skipped == {"output.proj": "dimension not divisible by 16"}


def test_real_kernel_needs_a_multiple_of_16_tokens():
    head = Float8OutputHead(OutputHead(CFG), emulate=False)
    with pytest.raises(UserError, match="multiple of 16 tokens"):
        head(torch.randn(1, 15, CFG.dim), torch.zeros(1, 15, dtype=torch.long))


def test_compiled_head_matches_eager():
    torch.manual_seed(0)
    head = Float8OutputHead(OutputHead(CFG), emulate=True)
    h, t = torch.randn(4, 16, CFG.dim), torch.randint(0, CFG.vocab_size, (4, 16))

    def run(module):
        module.zero_grad()
        loss = module(h, t)
        loss.backward()
        return loss.detach(), module.proj.weight.grad.clone()

    eager = run(head)
    head.compile(fullgraph=True)
    compiled = run(head)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-5)
    assert sqnr_db(eager[1], compiled[1]) > 30  # same fp8 values; fusion may round the bf16 logits differently


def test_head_gradient_kernel_option_gives_the_same_numbers_and_is_checked(monkeypatch):
    """Fp8Options.head_kernel: the logit gradient through head_grad_fp8's op (on a CPU its reference, which is
    the head's own computation) gives the same loss and gradients, compiled too; a run checks the kernel at its
    shape and refuses a wrong one; the bench suffix -headkernel reaches it."""
    from cs336_basics.errors import UserError
    from cs336_basics.model.transformer import ModelConfig
    from cs336_basics.perf.matrix import parse_mode
    from cs336_basics.precision import head_grad_fp8
    from cs336_basics.training.setup import Fp8Options, build_model

    assert parse_mode("fp8-delayed-compile-headkernel")["fp8_head_kernel"] is True
    assert parse_mode("fp8-tensorwise-compile-headkernel")["fp8_head_kernel"] is True
    with pytest.raises(UserError, match="without -bf16head"):
        parse_mode("fp8-delayed-compile-bf16head-headkernel")
    torch.manual_seed(0)
    x, w = torch.randn(32, 16), torch.randn(40, 16) * 0.5
    t = torch.randint(0, 40, (32,))
    for compiled in (False, True):  # compiled: the op inside the graph, against the compiled head without it
        with_kernel, without = (lambda *a, k=k: linear_cross_entropy_fp8(*a, emulate=True, kernel=k) for k in (True, False))
        if compiled:
            with_kernel, without = torch.compile(with_kernel, fullgraph=True), torch.compile(without, fullgraph=True)
        for a, b in zip(loss_and_grads(without, x, w, t), loss_and_grads(with_kernel, x, w, t)):
            if compiled:  # inductor rounds exp(logits - lse) its own way: e5m2 values a step apart (4% of the
                # input gradient's elements off by up to 8% of its largest at this tiny size); fullgraph: no break
                torch.testing.assert_close(b, a, rtol=0.1, atol=0.1 * float(a.abs().max()))
            else:
                assert torch.equal(a, b)
    cfg = ModelConfig(vocab_size=256, context_length=16, dim=32, n_layers=2, n_heads=2, intermediate_size=64)
    seen = []
    model, _ = build_model(cfg, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, head_kernel=True), 32,
                           log=seen.append)
    assert model.output.kernel and "fp8 head-gradient kernel checked at 32 tokens x 256" in " ".join(seen)
    with pytest.raises(UserError, match="this model's head is not in float8"):
        build_model(cfg, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, head=False, head_kernel=True), 32)
    right = head_grad_fp8.head_grad_fp8

    def transposed_wrong(logits, lse, targets, config=None):
        g8, g8t = right(logits, lse, targets)
        return g8, g8t.view(torch.uint8).flip(1).view(g8t.dtype)

    monkeypatch.setattr(head_grad_fp8, "head_grad_fp8", transposed_wrong)
    with pytest.raises(UserError, match="head-gradient kernel computed wrong results .*transposed copy differs"):
        build_model(cfg, torch.device("cpu"), Fp8Options(recipe="delayed", emulate=True, head_kernel=True), 32,
                    log=lambda s: None)


def test_head_kernel_trainer_flag_recorded_kept_on_resume_and_refused_without_the_fp8_head(tmp_path, capsys, tiny_cli):
    import json

    train, base = tiny_cli

    assert train(base + ["--out_dir", tmp_path / "run", "--max_steps", 2, "--use_fp8", "--fp8_emulate", "--fp8_head_kernel"]) == 0
    out = capsys.readouterr().out
    assert "the head's logit gradient: our Triton kernel" in out and "fp8 head-gradient kernel checked at 64 tokens x 288" in out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["fp8_head_kernel"] is True
    assert train(["--resume", tmp_path / "run", "--max_steps", 3, "--fp8_emulate", "--cache_dir", tmp_path / "cache",
                  "--sample_tokens", 0]) == 0
    assert "(--fp8_head_kernel)" in capsys.readouterr().out
    assert train(base + ["--out_dir", tmp_path / "b", "--max_steps", 1, "--fp8_head_kernel"]) == 2
    assert "--fp8_head_kernel / --no-fp8_head_kernel only apply with --use_fp8" in capsys.readouterr().err
    assert train(base + ["--out_dir", tmp_path / "c", "--max_steps", 1, "--use_fp8", "--fp8_emulate", "--no-fp8_head",
                         "--fp8_head_kernel"]) == 2
    assert "--fp8_head_kernel computes the float8 head's gradient: drop --no-fp8_head" in capsys.readouterr().err
