import torch

from cs336_basics.generation import generate, sample_next
from cs336_basics.model.transformer import Transformer
from conftest import TEST


def test_greedy_top_k_and_top_p():
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    assert sample_next(logits, 0.0, None, None) == 1
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, 2, None, g) for _ in range(200)} == {1, 2}  # top-k 2
    # probabilities ~ (0.09, 0.66, 0.24, 0.01): top-p 0.7 keeps the two largest
    assert {sample_next(logits, 1.0, None, 0.7, g) for _ in range(200)} == {1, 2}
    assert {sample_next(logits, 1.0, None, 0.5, g) for _ in range(50)} == {1}


class FavoursSeven(Transformer):
    """The test model, with logits that make token 7 overwhelmingly likely after any context."""

    def forward(self, idx, targets=None):
        logits = super().forward(idx)
        logits[..., 7] += 100.0
        return logits


def test_generate_stops_at_stop_token_and_respects_length():
    torch.manual_seed(0)
    model = FavoursSeven(TEST)
    assert generate(model, [1, 2, 3], 10, temperature=0.0) == [7] * 10
    assert generate(model, [1, 2, 3], 10, temperature=0.0, stop_id=7) == []
    long_prompt = list(range(100))  # longer than the context (32): cropped, not an error
    assert len(generate(model, long_prompt, 5, temperature=1.0, top_k=3)) == 5
