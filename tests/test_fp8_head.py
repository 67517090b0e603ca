"""The float8 output head + cross-entropy (precision/fp8_head.py) against the plain bf16/fp32 head, on CPU:
emulated fp8 numerics, the real `torch._scaled_mm` CPU kernel, and the compiled graph the GPU runs."""

import pytest
import torch
import torch.nn.functional as F

from cs336_basics.errors import UserError
from cs336_basics.model.transformer import ModelConfig, OutputHead
from cs336_basics.precision.fp8_head import Float8OutputHead, linear_cross_entropy_fp8

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


def test_head_keeps_the_plain_heads_state_dict_keys_and_logits():
    """The float8 head holds the plain head's modules: the same state-dict keys, and without targets the plain
    projection's logits."""
    plain = OutputHead(CFG)
    head = Float8OutputHead(plain, emulate=True)
    assert list(head.state_dict()) == list(OutputHead(CFG).state_dict())
    h = torch.randn(2, 16, CFG.dim)
    torch.testing.assert_close(head(h), plain(h))


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
