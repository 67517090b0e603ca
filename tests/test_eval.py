"""cs336-eval (cs336_basics.cli.eval): loss, perplexity and bits per byte of a run, checkpoint, exported file or
transformers directory on text files, checked against the model computed by hand; one-line errors."""

import json
import math

import pytest
import torch

from conftest import one_line_error  # noqa: F401  (also puts the repository on sys.path)
from cs336_basics.cli import run_main
from cs336_basics.cli.eval import main as eval_main
from cs336_basics.cli.eval import token_bytes
from cs336_basics.data.tokenizer import EOT, train_tokenizer
from cs336_basics.model.transformer import ModelConfig, Transformer
from cs336_basics.training.checkpoint import save_checkpoint

CFG = ModelConfig(vocab_size=320, context_length=16, dim=32, n_layers=2, n_heads=2, intermediate_size=64)
TRAIN_TEXT = [f"Document {i}: the quick brown fox jumps over the lazy dog {i}. Ünïcödé ✓ 日本語 «quoted».\n"
              for i in range(200)]
ASCII = "".join(f"line {i}: the quick brown fox {i % 17} jumps over {i % 5} lazy dogs.\n" for i in range(12))
MIXED = "Ünïcödé ✓ 日本語 «quoted» 🙂 text.\n" * 3 + EOT + "naïve café — ∑ 𝔘𝔫𝔦.\n" * 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run directory, model, tokenizer): one checkpoint of a small random model and a trained tokenizer."""
    tokenizer = train_tokenizer(iter(TRAIN_TEXT + [EOT]), vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    save_checkpoint(run_dir, 5, {"step": 5, "model_config": CFG.to_dict(), "model": model.state_dict()}, keep=1,
                    files={"tokenizer.json": tokenizer.to_str()})
    return run_dir, model, tokenizer


def eval_json(capsys, argv) -> dict:
    capsys.readouterr()
    assert run_main(eval_main, [str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out)


def by_hand(model, tokenizer, text: str, max_tokens: int | None = None) -> tuple[float, int, int]:
    """(summed nats, predicted tokens, their bytes): windows of T + 1 tokens at a stride of T, each window's
    mean loss from the model times its length; bytes from decoding the predicted ids (ASCII text: no character
    is cut)."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    T = model.cfg.context_length
    n = (len(ids) - 1) // T * T if max_tokens is None else min(max_tokens, len(ids) - 1)
    nats = 0.0
    with torch.no_grad():
        for start in range(0, n, T):
            w = torch.tensor(ids[start : min(start + T, n) + 1])[None]
            nats += model(w[:, :-1], w[:, 1:]).item() * (w.shape[1] - 1)
    return nats, n, len(tokenizer.decode(ids[1 : n + 1]).encode("utf-8"))


@pytest.mark.parametrize("max_tokens", [None, 40])
def test_bits_per_byte_is_the_hand_computation(tmp_path, capsys, run, max_tokens):
    run_dir, model, tokenizer = run
    data = tmp_path / "ascii.txt"
    data.write_text(ASCII)
    nats, tokens, n_bytes = by_hand(model, tokenizer, ASCII, max_tokens)
    assert n_bytes > tokens > 100 or max_tokens
    extra = ["--max_tokens", max_tokens] if max_tokens else []
    out = eval_json(capsys, [run_dir, data, "--json", "--batch_size", 3, "--device", "cpu", *extra])
    assert out["tokens"] == tokens and out["bytes"] == n_bytes and out["step"] == 5
    assert out["loss"] == pytest.approx(nats / tokens, rel=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(nats / tokens), rel=1e-5)
    assert out["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    assert out["context_length"] == CFG.context_length and len(out["files"]) == 1


def test_token_bytes_are_exact_on_multibyte_text(run):
    """The bytes counted for every token of a text with multi-byte characters (some split between tokens) and an
    <|endoftext|> sum to the text's UTF-8 size."""
    _, _, tokenizer = run
    ids = tokenizer.encode(MIXED, add_special_tokens=False).ids
    assert tokenizer.token_to_id(EOT) in ids
    assert int(token_bytes(tokenizer)[ids].sum()) == len(MIXED.encode("utf-8"))


def test_run_directory_export_file_and_hf_directory_agree(tmp_path, capsys, run):
    from cs336_basics.cli.export import main as export_main
    from cs336_basics.cli.generate import main as generate_main

    run_dir, _, _ = run
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(ASCII)
    b.write_text(MIXED * 2)
    assert generate_main([str(run_dir), "--export", str(tmp_path / "model.safetensors")]) == 0
    assert export_main([str(run_dir), str(tmp_path / "hf")]) == 0
    results = [eval_json(capsys, [source, a, b, "--json"])
               for source in (run_dir, tmp_path / "model.safetensors", tmp_path / "hf")]
    for key in ("loss", "bits_per_byte", "tokens", "bytes"):
        assert results[0][key] == results[1][key] == pytest.approx(results[2][key], rel=1e-6)
    first = results[0]
    assert [f["path"] for f in first["files"]] == [str(a), str(b)]
    assert first["tokens"] == sum(f["tokens"] for f in first["files"])
    assert first["nats"] == pytest.approx(sum(f["nats"] for f in first["files"]))
    assert first["bits_per_byte"] == pytest.approx(first["nats"] / math.log(2) / first["bytes"])


def test_readable_output(tmp_path, capsys, run):
    run_dir, _, _ = run
    data = tmp_path / "ascii.txt"
    data.write_text(ASCII)
    capsys.readouterr()
    assert run_main(eval_main, [str(run_dir), str(data)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "(step 5)" in lines[0] and "bits/byte" in lines[0] and "perplexity" in lines[0]


def test_one_line_errors(tmp_path, capsys, run):
    run_dir, _, _ = run
    data, empty, short = tmp_path / "ascii.txt", tmp_path / "empty.txt", tmp_path / "short.txt"
    data.write_text(ASCII)
    empty.write_text("")
    short.write_text("the quick")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    cases = [
        ([run_dir, tmp_path / "missing.txt"], "does not exist"),
        ([run_dir, empty], "is empty"),
        ([run_dir, short], "too little for one window"),
        ([run_dir, tmp_path], "is a directory"),
        ([tmp_path / "no_run", data], "does not exist"),
        ([data, data], "is not a safetensors file"),
        ([tmp_path, data], "no checkpoint in"),
        ([hf_dir, data], "only llama models are imported"),
        ([run_dir, data, "--batch_size", 0], "--batch_size"),
        ([run_dir, data, "--max_tokens", -1], "--max_tokens"),
    ]
    for argv, pattern in cases:
        capsys.readouterr()
        one_line_error(capsys, run_main(eval_main, [str(a) for a in argv]), pattern)
