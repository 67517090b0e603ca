"""Export to a transformers Llama directory and import from one (cs336_basics.interop.hf, cs336-export): the same
logits and greedy tokens in transformers, the same tokenizer, bit-identical round trips, refusals."""

import json
from pathlib import Path

import pytest
import torch

from conftest import ROOT  # noqa: F401  (puts the repository on sys.path)
from cs336_basics.cli.export import main as export_main
from cs336_basics.data.tokenizer import EOT, train_tokenizer
from cs336_basics.errors import UserError
from cs336_basics.generation import generate
from cs336_basics.interop.hf import export_hf, import_hf
from cs336_basics.model.transformer import ModelConfig, Transformer
from cs336_basics.training.checkpoint import load_model_weights, save_checkpoint

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")

CFG = ModelConfig(vocab_size=300, context_length=32, dim=32, n_layers=2, n_heads=2, intermediate_size=64,
                  rope_theta=5000.0, norm_eps=1e-6)
TEXT = ["Document {i}: the quick brown fox jumps over the lazy dog {i}. Ünïcödé ✓ 日本語 «quoted».\n".format(i=i)
        for i in range(200)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iter(TEXT + [EOT]), vocab_size=CFG.vocab_size)


def make_model(cfg: ModelConfig = CFG, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():  # gains other than 1 and larger weights, so that a misplaced tensor shows in the logits
        for name, p in model.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if name.endswith("norm.weight") else p * 5)
    return model.eval()


def write_run(run_dir: Path, model: Transformer, tokenizer) -> Path:
    state = {"step": 7, "model_config": model.cfg.to_dict(), "model": model.state_dict()}
    return save_checkpoint(run_dir, 7, state, keep=1, files={"tokenizer.json": tokenizer.to_str()})


def hf_model(path: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def assert_same_logits(ours: Transformer, theirs, vocab: int, atol: float = 1e-4) -> None:
    torch.manual_seed(1)
    idx = torch.randint(0, vocab, (3, ours.cfg.context_length))
    with torch.no_grad():
        a, b = ours(idx), theirs(idx).logits
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < atol


@pytest.mark.parametrize("tied", [False, True])
def test_export_loads_in_transformers_with_the_same_logits_and_greedy_tokens(tmp_path, tokenizer, tied):
    cfg = ModelConfig(**{**CFG.to_dict(), "tie_embeddings": tied})
    model = make_model(cfg)
    write_run(tmp_path / "run", model, tokenizer)
    assert export_main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["num_key_value_heads"] == config["num_attention_heads"] == 2
    assert config["rope_theta"] == 5000.0 and config["rms_norm_eps"] == 1e-6 and config["tie_word_embeddings"] is tied
    theirs = hf_model(tmp_path / "hf")
    assert isinstance(theirs, transformers.LlamaForCausalLM)
    assert_same_logits(model, theirs, cfg.vocab_size)

    prompt = tokenizer.encode("the quick brown").ids
    ours = generate(model, prompt, 20, temperature=0)  # no stop token: 20 tokens each
    with torch.no_grad():
        out = theirs.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
    assert out[0, len(prompt):].tolist() == ours


def test_transformers_tokenizer_encodes_and_decodes_like_ours(tmp_path, tokenizer):
    write_run(tmp_path / "run", make_model(), tokenizer)
    export_hf(tmp_path / "run", tmp_path / "hf")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    eot = tokenizer.token_to_id(EOT)
    assert theirs.eos_token == EOT and theirs.eos_token_id == eot and theirs.bos_token_id == eot
    for text in ["Document 3: the quick brown fox", "  spaces  and\ttabs\n", f"one{EOT}two", "日本語 ✓ «x»", "x"]:
        ids = tokenizer.encode(text).ids
        assert theirs.encode(text) == ids, text
        assert theirs(text)["input_ids"] == ids
        assert theirs.decode(ids) == tokenizer.decode(ids, skip_special_tokens=False) == text


def test_round_trip_ours_to_hf_to_ours_is_bit_identical(tmp_path, tokenizer):
    model = make_model()
    write_run(tmp_path / "run", model, tokenizer)
    export_hf(tmp_path / "run", tmp_path / "hf")
    assert export_main(["--from-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back = load_model_weights(tmp_path / "back")
    assert (tmp_path / "back" / "checkpoints" / "step_0000000" / "model.safetensors").is_file()
    assert back["model_config"] == CFG.to_dict() and back["step"] == 0
    assert back["tokenizer"] == tokenizer.to_str()
    original = model.state_dict()
    assert back["model"].keys() == original.keys()
    for name, tensor in original.items():
        assert back["model"][name].dtype == torch.float32
        assert torch.equal(back["model"][name], tensor), name


def test_bfloat16_export(tmp_path, tokenizer):
    model = make_model()
    write_run(tmp_path / "run", model, tokenizer)
    assert export_main([str(tmp_path / "run"), str(tmp_path / "hf"), "--dtype", "bfloat16"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert torch.equal(tensors["model.layers.1.mlp.down_proj.weight"],
                       model.layers[1].ffn.w2.weight.detach().bfloat16())


def test_import_of_a_transformers_model_and_generate_samples_from_it(tmp_path, tokenizer, capsys):
    for tied in (False, True):
        config = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=24,
                                          rms_norm_eps=1e-5, rope_theta=20000.0, tie_word_embeddings=tied)
        torch.manual_seed(2)
        theirs = transformers.LlamaForCausalLM(config).eval()
        hf_dir, run_dir = tmp_path / f"hf{tied}", tmp_path / f"run{tied}"
        theirs.save_pretrained(hf_dir)
        (hf_dir / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
        checkpoint = import_hf(hf_dir, run_dir)
        assert checkpoint == run_dir / "checkpoints" / "step_0000000"
        state = load_model_weights(run_dir)
        cfg = ModelConfig(**state["model_config"])
        assert (cfg.dim, cfg.n_heads, cfg.intermediate_size, cfg.context_length, cfg.rope_theta, cfg.tie_embeddings) \
            == (32, 4, 48, 24, 20000.0, tied)
        ours = Transformer(cfg)
        ours.load_state_dict(state["model"])
        assert_same_logits(ours.eval(), theirs, 300)

    from cs336_basics.cli.generate import main as generate_main

    capsys.readouterr()
    assert generate_main([str(run_dir), "--prompt", "the quick", "--max_new_tokens", "5", "--device", "cpu"]) == 0
    assert "--- sample 1 (step 0) ---" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # one process writes every shard
def test_export_of_a_sharded_checkpoint(tmp_path, tokenizer):
    from cs336_basics.training.checkpoint import step_path
    from cs336_basics.training.distributed import DistributedContext, save_sharded

    model = make_model()
    meta = {"step": 3, "model_config": CFG.to_dict(), "optimizer_saved": False}
    save_sharded(step_path(tmp_path / "run", 3), model, None, meta, DistributedContext(),
                 {"tokenizer.json": tokenizer.to_str()})
    assert (step_path(tmp_path / "run", 3) / ".metadata").is_file()
    export_hf(tmp_path / "run", tmp_path / "hf")
    assert_same_logits(model, hf_model(tmp_path / "hf"), CFG.vocab_size)


def llama_config(tmp_path: Path, **fields) -> Path:
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, max_position_embeddings=16, **fields).to_dict()
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir(exist_ok=True)
    (hf_dir / "config.json").write_text(json.dumps(config))
    return hf_dir


@pytest.mark.parametrize("fields, named", [
    ({"num_key_value_heads": 2}, "num_key_value_heads"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope"),
    ({"head_dim": 16}, "head_dim"),
])
def test_unsupported_transformers_configs_are_refused_naming_the_field(tmp_path, tokenizer, fields, named, capsys):
    hf_dir = llama_config(tmp_path, **fields)
    with pytest.raises(UserError, match=named):
        import_hf(hf_dir, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    from cs336_basics.cli import run_main

    assert run_main(export_main, ["--from-hf", str(hf_dir), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and named in err and err.count("\n") == 1


def test_other_model_types_and_bad_arguments_are_refused(tmp_path, tokenizer):
    hf_dir = tmp_path / "gpt2"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UserError, match="model_type"):
        import_hf(hf_dir, tmp_path / "run")
    write_run(tmp_path / "ours", make_model(), tokenizer)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError, match="not an empty directory"):
        export_main([str(tmp_path / "ours"), str(tmp_path / "full")])
    with pytest.raises(UserError, match="--dtype"):
        export_main(["--from-hf", str(tmp_path / "hf"), str(tmp_path / "new"), "--dtype", "bfloat16"])
    with pytest.raises(UserError, match="no checkpoint|does not exist|not a checkpoint"):
        export_main([str(tmp_path / "nothing"), str(tmp_path / "new")])


def test_export_of_an_fp8_trained_run(tmp_path, tokenizer):
    """A run trained with float8 linear layers (emulated) checkpoints plain float32 weights under the plain names."""
    import numpy as np

    from conftest import fp8_config, make_config, make_trainer

    tokens = np.random.default_rng(0).integers(0, 512, 4000).astype(np.uint16)
    trainer = make_trainer(make_config(fp8=fp8_config("tensorwise"), max_steps=1), tokens, tmp_path / "fp8")
    assert any(type(m).__name__ == "Float8Linear" for m in trainer.model.modules())
    state = trainer.state_dict()
    save_checkpoint(tmp_path / "fp8", 1, state, keep=1, files={"tokenizer.json": tokenizer.to_str()})
    export_hf(tmp_path / "fp8", tmp_path / "hf")
    plain = Transformer(ModelConfig(**state["model_config"]))
    plain.load_state_dict(state["model"])
    assert_same_logits(plain.eval(), hf_model(tmp_path / "hf"), plain.cfg.vocab_size)
