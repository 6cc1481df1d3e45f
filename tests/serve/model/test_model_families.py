"""The plain-PyTorch model matches transformers on other Llama-family variants: Qwen2 (QKV bias), untied
embeddings with Llama-3 RoPE scaling, linear RoPE scaling."""

import pytest
import torch

from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
from tests.serve.conftest import hf_greedy


def _save(model, directory, tiny_model_dir):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(directory)
    return directory


def _common(tiny_model_dir):
    import json

    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    return {
        "vocab_size": cfg["vocab_size"],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "eos_token_id": cfg["eos_token_id"],
    }


@pytest.mark.parametrize("variant", ["qwen2", "llama3-untied", "linear-rope"])
def test_variant_matches_transformers(tiny_model_dir, tmp_path, variant):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = _common(tiny_model_dir)
    if variant == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    elif variant == "llama3-untied":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 50000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False, rope_parameters=rope))
    else:
        rope = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True, rope_parameters=rope))
    directory = _save(model, tmp_path / variant, tiny_model_dir)
    engine = Engine(EngineConfig(model=str(directory), precision="fp32"))
    prompts = [
        engine.tokenizer(t).input_ids for t in ["The quick brown fox jumps", "card_arrival 0 1 2 3 4 5 6"]
    ]
    expected = hf_greedy(directory, prompts, [None, None], 24)
    got = engine.generate(prompts, SamplingParams(max_tokens=24, temperature=0))
    assert [s.output_ids for s in got] == expected
    if variant == "qwen2":
        assert engine.model.cfg.qkv_bias
    if variant == "llama3-untied":
        assert engine.model.lm_head.weight is not engine.model.embed
