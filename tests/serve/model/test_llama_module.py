"""The model is a proper `nn.Module`: its weights are frozen parameters that `.parameters()`, `state_dict()`
and `.to()` see, and a moved model still computes the same thing."""

import math

import torch
from safetensors import safe_open

from loraforge.serve.kernels.ops import TORCH_OPS
from loraforge.serve.lora.weights import NO_LORA
from loraforge.serve.model.attention import AttentionMetadata
from loraforge.serve.model.kv_cache import KVCache
from loraforge.serve.model.llama import Llama


def _last_hidden(model: Llama, ids: list[int]) -> torch.Tensor:
    cfg, dtype = model.cfg, model.dtype  # the activations' (the embedding is bf16 under reduced weights)
    kv = KVCache(cfg.num_layers, 4, 16, cfg.num_kv_heads, cfg.head_dim, dtype)
    n = len(ids)
    meta = AttentionMetadata(
        is_prefill=True, slot_mapping=torch.arange(n), last_token_index=torch.tensor([n - 1])
    )
    return model(torch.tensor(ids), torch.arange(n), meta, kv, NO_LORA)


def test_weights_are_registered_parameters(tiny_model_dir):
    model = Llama.load(tiny_model_dir, torch.float32)
    with safe_open(str(tiny_model_dir / "model.safetensors"), framework="pt") as st:
        stored = sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == stored  # every weight once (the tied LM head is the embedding)
    assert params and not any(p.requires_grad for p in params)
    keys = model.state_dict().keys()
    assert "embed" in keys and "layers.0.attn.qkv.weight" in keys and "layers.1.mlp.down.weight" in keys


def test_to_moves_every_weight_and_the_model_still_computes_the_same(tiny_model_dir):
    model = Llama.load(tiny_model_dir, torch.float32)
    ids = [5, 17, 42, 3, 99]
    expected = _last_hidden(model, ids).double()
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model.ops is TORCH_OPS and model.layers[0].attn.qkv.ops is TORCH_OPS  # no kernels for fp64
    torch.testing.assert_close(_last_hidden(model, ids), expected, rtol=1e-4, atol=1e-4)
