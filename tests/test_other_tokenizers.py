"""A run trained with a tokenizer other than this project's (a Llama-style SentencePiece BPE: </s> ends a document,
<s> begins a text) through the commands after training: cs336-generate samples from it with prompts encoded as
training encodes its text (no <s>), cs336-eval evaluates it, cs336-export writes a transformers directory whose
eos is </s> and whose bos is <s>, which transformers loads with the same logits, and --from-hf imports it back.
A tokenizer with no end-of-document token is still refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import one_line_error, run_train
from cs336_basics.cli import run_main
from cs336_basics.cli.eval import main as eval_main
from cs336_basics.cli.export import main as export_main
from cs336_basics.cli.generate import main as generate_main
from cs336_basics.data.tokenizer import EOT, eot_id
from cs336_basics.errors import UserError
from cs336_basics.interop.hf import bos_eos_tokens, hf_tokenizer_files
from cs336_basics.model.transformer import Transformer
from cs336_basics.training.checkpoint import (load_model_weights, model_from_weights, save_checkpoint,
                                              tokenizer_from_json)
from test_tokenizers import MODEL_FLAGS, TEXT, gpt2_like, llama_like, saved

BOS, EOS = 1, 2  # llama_like's <s> and </s>
PROMPT = "The quick"


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory) -> tuple[Path, list[list[int]]]:
    """(run directory of 2 steps trained with llama_like's tokenizer, the prompt ids its sample after training
    was given)."""
    root = tmp_path_factory.mktemp("llama_run")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": "".join(TEXT[i:i + 5])}) + "\n" for i in range(0, 200, 5)))
    argv = [*MODEL_FLAGS, "--tokenizer", saved(llama_like(), root / "tokenizer.json"), "--train_data", corpus,
            "--set", f"data.cache_dir={root / 'cache'}", "--out_dir", root / "run", "--max_steps", 2,
            "--batch_size", 2, "--eval_interval", 2, "--set", "train.eval_steps=1", "--set", "run.sample_tokens=4",
            "--set", f"run.prompt={PROMPT}"]
    import cs336_basics.cli.train as train_cli

    prompts: list[list[int]] = []

    def recording_generate(model, prompt, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        prompts.append(list(prompt))
        return real_generate(model, prompt, *args, **kwargs)

    real_generate = train_cli.generate
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_cli, "generate", recording_generate)
        assert run_train(argv) == 0
    return root / "run", prompts


def test_the_llama_like_tokenizer_puts_bos_before_a_text_unless_told_not_to():
    """What the prompt tests below rely on: encode() with the post-processor adds <s>."""
    tokenizer = llama_like()
    assert tokenizer.encode(PROMPT).ids[0] == BOS
    assert BOS not in tokenizer.encode(PROMPT, add_special_tokens=False).ids


def test_generate_samples_from_the_run_with_prompts_without_bos(llama_run, capsys, monkeypatch):
    run_dir, sample_prompts = llama_run
    tokenizer = tokenizer_from_json(load_model_weights(run_dir)["tokenizer"], str(run_dir))
    expected = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    assert sample_prompts == [expected]  # the sample after training

    import cs336_basics.cli.generate as generate_cli

    seen: list[tuple[list[list[int]], int]] = []
    real = generate_cli.generate_batch

    def recording(model, prompts, *args, stop_id, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(([list(p) for p in prompts], stop_id))
        return real(model, prompts, *args, stop_id=stop_id, **kwargs)

    monkeypatch.setattr(generate_cli, "generate_batch", recording)
    capsys.readouterr()
    argv = [str(run_dir), "--prompt", PROMPT, "--prompt", "lazy dog", "--max_new_tokens", "6", "--device", "cpu"]
    assert generate_main(argv) == 0
    out = capsys.readouterr().out
    assert "--- sample 1 (step 2) ---\nThe quick" in out and "--- sample 2 (step 2) ---\nlazy dog" in out
    (prompts, stop_id), = seen
    assert prompts == [expected, tokenizer.encode("lazy dog", add_special_tokens=False).ids]
    assert all(BOS not in p for p in prompts) and stop_id == EOS


def test_eval_evaluates_the_run_and_its_export_alike(llama_run, tmp_path, capsys):
    run_dir, _ = llama_run
    data = tmp_path / "data.txt"
    data.write_text("".join(TEXT[:20]) + "</s>" + "".join(TEXT[20:40]))
    assert export_main([str(run_dir), str(tmp_path / "hf")]) == 0
    results = []
    for source in (run_dir, tmp_path / "hf"):
        capsys.readouterr()
        assert run_main(eval_main, [str(source), str(data), "--json", "--device", "cpu"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    ours, theirs = results
    assert ours["step"] == 2 and ours["tokens"] > 100 and 0 < ours["bits_per_byte"] < 20
    assert ours["tokens"] == theirs["tokens"] and ours["bytes"] == theirs["bytes"]
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-6)


def test_export_writes_the_runs_own_eos_and_bos_and_transformers_loads_it(llama_run, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    run_dir, _ = llama_run
    hf_dir = tmp_path / "hf"
    assert export_main([str(run_dir), str(hf_dir)]) == 0

    def read(name: str) -> dict:
        return json.loads((hf_dir / name).read_text())

    assert (read("config.json")["eos_token_id"], read("config.json")["bos_token_id"]) == (EOS, BOS)
    assert read("generation_config.json") == {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": EOS}
    assert read("special_tokens_map.json") == {"bos_token": "<s>", "eos_token": "</s>"}
    assert (read("tokenizer_config.json")["eos_token"], read("tokenizer_config.json")["bos_token"]) == ("</s>", "<s>")

    theirs_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert (theirs_tok.eos_token, theirs_tok.eos_token_id, theirs_tok.bos_token_id) == ("</s>", EOS, BOS)
    state = load_model_weights(run_dir)
    ours_tok = tokenizer_from_json(state["tokenizer"], state["path"])
    for text in ["the quick brown fox", "naïve café ✓ 🙂", "one</s>two"]:
        assert theirs_tok.encode(text, add_special_tokens=False) == ours_tok.encode(text, add_special_tokens=False).ids

    ours = model_from_weights(state, torch.device("cpu"))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    torch.manual_seed(1)
    idx = torch.randint(0, ours.cfg.vocab_size, (2, ours.cfg.context_length))
    with torch.no_grad():
        assert (ours(idx) - theirs(idx).logits).abs().max().item() < 1e-4

    # and back: --from-hf accepts the directory, and generate samples from the imported run
    assert export_main(["--from-hf", str(hf_dir), str(tmp_path / "back")]) == 0
    assert load_model_weights(tmp_path / "back")["tokenizer"] == state["tokenizer"]
    assert generate_main([str(tmp_path / "back"), "--prompt", PROMPT, "--max_new_tokens", "3", "--device", "cpu"]) == 0


@pytest.mark.parametrize("specials, bos, eos", [
    (("<unk>", "<s>", "</s>"), "<s>", "</s>"),
    (("<unk>", "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"), "<|begin_of_text|>", "<|end_of_text|>"),
    (("<unk>", "</s>"), "</s>", "</s>"),  # no beginning token of its own: the end token, as GPT-2's
])
def test_exported_bos_and_eos_follow_the_tokenizer(specials, bos, eos):
    tokenizer = llama_like(specials=specials)
    assert bos_eos_tokens(tokenizer) == (bos, eos)
    files = hf_tokenizer_files(tokenizer.to_str(), 32, *bos_eos_tokens(tokenizer))
    assert json.loads(files["special_tokens_map.json"]) == {"bos_token": bos, "eos_token": eos}
    assert bos_eos_tokens(gpt2_like()) == (EOT, EOT)


def test_a_tokenizer_without_an_end_token_is_still_refused_in_one_line(tmp_path, capsys):
    from conftest import TEST

    no_end = llama_like(specials=("<unk>", "<s>"))
    with pytest.raises(UserError, match=r"the tokenizer of X has no end-of-document token \(none of"):
        tokenizer_from_json(no_end.to_str(), "X")
    assert eot_id(llama_like()) == EOS
    run_dir = tmp_path / "run"
    save_checkpoint(run_dir, 1, {"step": 1, "model_config": TEST.to_dict(), "model": Transformer(TEST).state_dict()},
                    keep=1, files={"tokenizer.json": no_end.to_str()})
    data = tmp_path / "data.txt"
    data.write_text("".join(TEXT))
    for main, argv in ((generate_main, [run_dir, "--device", "cpu"]), (eval_main, [run_dir, data, "--device", "cpu"]),
                       (export_main, [run_dir, tmp_path / "hf"])):
        error = one_line_error(capsys, run_main(main, [str(a) for a in argv]), "has no end-of-document token")
        assert str(run_dir) in error
    assert not (tmp_path / "hf").exists()
