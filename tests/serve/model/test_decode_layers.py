"""A decode step without adapters runs every layer in one C++ call (`ops.decode_layers`): it computes exactly
what the per-layer loop computes (the same kernels in the same order), in every weight format, and is taken
only where it applies."""

import pytest
import torch

from loraforge.serve.lora.weights import NO_LORA
from loraforge.serve.model.attention import AttentionMetadata
from loraforge.serve.model.kv_cache import KVCache
from loraforge.serve.model.llama import Llama

BLOCK = 16


def _prefill(model: Llama, kv: KVCache, prompts: list[list[int]]) -> None:
    """Each prompt alone into its own cache block."""
    for i, ids in enumerate(prompts):
        n = len(ids)
        meta = AttentionMetadata(
            is_prefill=True,
            slot_mapping=torch.arange(n) + i * BLOCK,
            last_token_index=torch.tensor([n - 1]),
        )
        model(torch.tensor(ids), torch.arange(n), meta, kv, NO_LORA)


def _decode(model: Llama, kv: KVCache, prompts: list[list[int]], tokens: list[int]) -> torch.Tensor:
    """One decode step: `tokens[i]` appended to prompt i."""
    lens = [len(p) + 1 for p in prompts]
    meta = AttentionMetadata(
        is_prefill=False,
        slot_mapping=torch.tensor([i * BLOCK + n - 1 for i, n in enumerate(lens)]),
        last_token_index=torch.arange(len(prompts)),
        block_tables=torch.arange(len(prompts))[:, None],
        context_lens=torch.tensor(lens),
    )
    positions = torch.tensor([n - 1 for n in lens])
    return model(torch.tensor(tokens), positions, meta, kv, NO_LORA)


def _both_paths(model: Llama, prompts, tokens, monkeypatch):
    """(hidden, kv) of a decode step through `decode_layers`, then through the Python loop."""
    cfg = model.cfg
    calls = []
    real = model.ops.decode_layers
    monkeypatch.setattr(model.ops, "decode_layers", lambda *a: calls.append(1) or real(*a))
    results = []
    for plan in (model.decode_plan(), None):
        kv = KVCache(cfg.num_layers, len(prompts), BLOCK, cfg.num_kv_heads, cfg.head_dim, model.dtype)
        _prefill(model, kv, prompts)
        monkeypatch.setattr(model, "_decode_plan", plan)
        results.append((_decode(model, kv, prompts, tokens), kv))
    assert calls == [1]  # the first step took the fused path, the second the loop
    return results


@pytest.mark.parametrize(
    ("precision", "weights", "rows"),
    [
        ("bf16", "plain", 1),
        ("fp32", "plain", 2),
        ("fp32", "bf16", 1),
        ("bf16", "int8", 3),
        ("bf16", "int4", 4),
    ],
)
def test_fused_decode_equals_the_layer_loop(tiny_model_dir, kernels, monkeypatch, precision, weights, rows):
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = Llama.load(tiny_model_dir, dtype, weight_format=weights)
    assert model.decode_plan() is not None and model.decode_plan().rows >= rows
    prompts = [[5, 17, 42, 3, 99], [7, 8], [200, 1, 2, 3, 4, 5, 6, 9], [11]][:rows]
    (fused, fused_kv), (loop, loop_kv) = _both_paths(model, prompts, [13, 21, 34, 55][:rows], monkeypatch)
    assert torch.equal(fused, loop)
    assert torch.equal(fused_kv.k, loop_kv.k) and torch.equal(fused_kv.v, loop_kv.v)


def test_fused_decode_adds_the_qkv_bias(tiny_model_dir, kernels, tmp_path, monkeypatch):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.serve.model.test_model_families import _common, _save

    directory = _save(
        Qwen2ForCausalLM(Qwen2Config(**_common(tiny_model_dir), tie_word_embeddings=True)),
        tmp_path / "qwen2",
        tiny_model_dir,
    )
    model = Llama.load(directory, torch.float32)
    assert model.cfg.qkv_bias and model.decode_plan().biases[0].numel() > 0
    (fused, _), (loop, _) = _both_paths(model, [[5, 17, 42], [9]], [3, 4], monkeypatch)
    assert torch.equal(fused, loop)


def test_fused_decode_only_where_it_applies(tiny_model_dir, kernels, monkeypatch):
    model = Llama.load(tiny_model_dir, torch.bfloat16)
    calls = []
    monkeypatch.setattr(model.ops, "decode_layers", lambda *a: calls.append(1))
    cfg = model.cfg
    kv = KVCache(cfg.num_layers, 3, BLOCK, cfg.num_kv_heads, cfg.head_dim, model.dtype)
    prompts = [[5, 6], [7, 8], [9, 10]]
    _prefill(model, kv, prompts)
    assert calls == []  # prefills run the loop
    _decode(model, kv, prompts, [1, 2, 3])
    assert calls == []  # 3 rows: plain weights run oneDNN's batched matmul there, not the row kernel
    _decode(model, kv, prompts[:2], [1, 2])
    assert calls == [1]


def test_no_plan_without_the_plain_weights(tiny_model_dir, kernels):
    from loraforge.serve.kernels.ops import TORCH_OPS

    model = Llama.load(tiny_model_dir, torch.float32)
    model.layers[1].mlp.down.weight = None  # held packed only (a model too large for both forms)
    assert model._build_decode_plan() is None
    model.ops = TORCH_OPS
    assert model._build_decode_plan() is None
