"""The engine with base weights in bf16 (under fp32 activations), int8 or int4 (`EngineConfig.weights`).

The exact check: the engine on a quantized base with LoRA adapters equals transformers + PEFT on the
*dequantized* checkpoint token for token, in one mixed batch, in fp32 activations, on the host's kernels and
on the AVX2 build. The dequantized checkpoint holds what the engine holds: the linear weights after the
round trip, the embedding table in bf16, the LM head in bf16 (bf16) or int8 (int8, int4); the adapters are
written with bf16-exact values because the engine holds them in bf16 under quantized weights. Then the
closeness check: int8 changes the tiny model's next-token logits by a small fraction of their spread."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraforge.errors import ConfigError
from loraforge.models.tiny_adapters import EQUALITY_ADAPTERS, EQUALITY_MAX_NEW, EQUALITY_PROMPTS
from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
from loraforge.serve.model.linear import QuantLinear
from loraforge.serve.model.quant import dequantize, format_for, quantize, resolve_weights
from tests.serve.conftest import hf_greedy

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _dequantized_checkpoint(model_dir, out, fmt):
    """`model_dir` with every weight replaced by what the engine computes with under `fmt`."""
    shutil.copytree(model_dir, out)
    state = load_file(model_dir / "model.safetensors")
    embed = state["model.embed_tokens.weight"]
    for name, w in state.items():
        if name.endswith(".weight") and name.split(".")[-2] in LINEAR:
            state[name] = dequantize(quantize(w, format_for(fmt, w.shape[1])))
    state["model.embed_tokens.weight"] = embed.to(torch.bfloat16).float()
    head = state.get("lm_head.weight", embed)
    state["lm_head.weight"] = dequantize(quantize(head, "bf16" if fmt == "bf16" else "int8"))
    save_file(state, out / "model.safetensors")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    return out


@pytest.fixture(scope="module")
def bf16_adapters(adapter_dir, tmp_path_factory):
    """The adapter registry with every value rounded to bf16 (exact in the engine's bf16 stacks)."""
    root = tmp_path_factory.mktemp("bf16-adapters")
    shutil.copytree(adapter_dir, root, dirs_exist_ok=True)
    for f in root.glob("*/adapter_model.safetensors"):
        save_file({k: v.to(torch.bfloat16).float() for k, v in load_file(f).items()}, f)
    return root


@pytest.fixture(scope="module")
def prompts(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return [tok(p).input_ids for p in EQUALITY_PROMPTS]


def _engine(model_dir, weights, adapter_dir=None, precision="fp32", **kw) -> Engine:
    config = EngineConfig(model=str(model_dir), precision=precision, weights=weights, adapter_dir=adapter_dir)
    return Engine(config, **kw)


@pytest.mark.parametrize("build", ["native", "avx2"])
@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
def test_lora_on_a_quantized_base_equals_peft_on_the_dequantized_base(
    request, tiny_model_dir, bf16_adapters, prompts, tmp_path, kernels, fmt, build
):
    if build == "avx2":
        request.getfixturevalue("force_avx2_kernels")
    expected = hf_greedy(
        _dequantized_checkpoint(tiny_model_dir, tmp_path / "deq", fmt),
        prompts,
        [bf16_adapters / a if a else None for a in EQUALITY_ADAPTERS],
        EQUALITY_MAX_NEW,
    )
    engine = _engine(tiny_model_dir, fmt, bf16_adapters)
    assert engine.model.weight_format == fmt and engine.lora.dtype == torch.bfloat16
    qkv = engine.model.layers[0].attn.qkv
    assert isinstance(qkv, QuantLinear) and qkv.fmt == fmt and engine.model.embed.dtype == torch.bfloat16
    greedy = SamplingParams(max_tokens=EQUALITY_MAX_NEW, temperature=0)
    got = engine.generate(prompts, greedy, EQUALITY_ADAPTERS)
    assert [s.output_ids for s in got] == expected
    # Batch 1 (the decode kernel alone) and a batch past the kernel's rows (dequantize + matmul) agree too.
    one = engine.generate(prompts[1:2], greedy, EQUALITY_ADAPTERS[1:2])
    assert one[0].output_ids == expected[1]
    wide = engine.generate(prompts * 3, SamplingParams(max_tokens=4, temperature=0), EQUALITY_ADAPTERS * 3)
    assert [s.output_ids for s in wide] == [e[:4] for e in expected * 3]


def test_int8_logits_stay_close_to_bf16(tiny_model_dir, prompts, kernels):
    """int8 rounds each weight to a step of 1/127 of its row's largest magnitude: a relative error of ~0.6%
    per weight (uniform noise of step / sqrt(12) on N(0, 0.08) weights), ~2% on the logits after the tiny
    model's nine linear layers (measured: 1.2-2.3% RMS of the logits' spread, 4-7% at worst). Allowed: 4%
    RMS, 15% at worst; a greedy first token may change only at a near tie (a gap under 15% of the spread).
    """
    engines = {fmt: _engine(tiny_model_dir, fmt) for fmt in ("bf16", "int8")}
    results = {}
    for fmt, engine in engines.items():
        firsts = engine.generate(prompts, SamplingParams(max_tokens=1, temperature=0))
        results[fmt] = [
            (s.output_ids[0], _next_logits(engine, ids)) for s, ids in zip(firsts, prompts, strict=True)
        ]
    for (tok_b, lb), (tok_8, l8) in zip(results["bf16"], results["int8"], strict=True):
        spread, diff = lb.std().item(), l8 - lb
        assert diff.pow(2).mean().sqrt().item() < 0.04 * spread
        assert diff.abs().max().item() < 0.15 * spread
        assert tok_b == tok_8 or (lb[tok_b] - lb[tok_8]).item() < 0.15 * spread


def _next_logits(engine: Engine, ids: list[int]) -> torch.Tensor:
    from loraforge.serve.lora.weights import NO_LORA
    from loraforge.serve.model.attention import AttentionMetadata

    n = len(ids)
    last = torch.tensor([n - 1])
    meta = AttentionMetadata(is_prefill=True, slot_mapping=torch.arange(n), last_token_index=last)
    hidden = engine.model(torch.tensor(ids), torch.arange(n), meta, engine.kv, NO_LORA)
    return engine.model.logits(hidden)[0].float()


def test_the_weight_format_follows_the_setting_and_the_cpu(kernels, monkeypatch):
    f32, bf16 = torch.float32, torch.bfloat16
    # fp32 activations by `precision auto` (no bf16 arithmetic): bf16 weights, widened in the kernels
    assert resolve_weights("auto", f32, "cpu") == "bf16"
    assert resolve_weights("auto", f32, "cpu", precision="fp32") == "plain"  # fp32 asked for
    monkeypatch.setenv("LORAFORGE_NO_KERNELS", "1")
    assert resolve_weights("auto", f32, "cpu") == "plain"  # nothing would widen them
    monkeypatch.delenv("LORAFORGE_NO_KERNELS")
    assert resolve_weights("bf16", f32, "cpu") == "bf16"  # 16 bits in memory, widened in the kernels
    assert resolve_weights("auto", bf16, "cpu") == "plain"
    assert resolve_weights("bf16", bf16, "cpu") == "plain"
    assert resolve_weights("int4", bf16, "cpu") == "int4"
    assert resolve_weights("auto", f32, "cuda") == "plain"
    for bad in [("fp32", bf16, "cpu"), ("int8", bf16, "cuda"), ("q4_k", f32, "cpu")]:
        with pytest.raises(ConfigError):
            resolve_weights(*bad)
