"""The C++ KV-cache write and greedy argmax give exactly what their PyTorch code gives."""

import pytest
import torch

from loraforge.serve.kernels.ops import TORCH_OPS, KernelOps, ops_for
from loraforge.serve.model.kv_cache import KVCache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 5, 300])  # 300: more than one parallel task
def test_kv_write_equals_the_pytorch_write(kernels, dtype, tokens):
    g = torch.Generator().manual_seed(tokens)
    caches = [KVCache(2, 40, 16, 3, 8, dtype) for _ in range(2)]
    slots = torch.randperm(40 * 16, generator=g)[:tokens]
    qkv = torch.randn(tokens, 5 * 3 * 8, generator=g).to(dtype)
    k = qkv[:, : 3 * 8].view(tokens, 3, 8)  # strided views of a fused projection, as in the model
    v = qkv[:, 4 * 3 * 8 :].view(tokens, 3, 8)
    kernel_ops = ops_for("cpu", dtype)
    assert isinstance(kernel_ops, KernelOps) and kernel_ops.kernels is kernels
    for ops, cache in zip((kernel_ops, TORCH_OPS), caches, strict=True):  # the kernel, the PyTorch code
        ops.kv_write(cache, 1, slots, k, v)
    assert torch.equal(caches[0].k, caches[1].k) and torch.equal(caches[0].v, caches[1].v)
    assert caches[0].k[1].abs().sum() > 0 and caches[0].k[0].abs().sum() == 0


def test_kv_write_rejects_slots_outside_the_cache(kernels):
    kv = KVCache(1, 2, 4, 1, 8, torch.float32)
    with pytest.raises(RuntimeError, match="outside the cache"):
        KernelOps(kernels).kv_write(kv, 0, torch.tensor([8]), torch.zeros(1, 1, 8), torch.zeros(1, 1, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_rows_equals_torch_argmax(kernels, dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, 1003, generator=g) * 4).to(dtype)  # 1003: a tail past the 16-wide lanes
    logits[3, 7] = logits[3, 900] = logits[3].max() + 1  # a tie: the first index wins
    logits[5] = -float("inf")
    logits[6, 1001] = logits[6].max() + 1  # the maximum in the tail
    logits[7, 10] = float("nan")  # NaN counts as the maximum, as in torch
    logits[7, 20] = float("inf")
    got = kernels.argmax_rows(logits)
    assert got.tolist() == logits.float().argmax(-1).tolist()
    assert got[3] == 7 and got[5] == 0 and got[6] == 1001 and got[7] == 10
    assert kernels.argmax_rows(logits[:, :9]).tolist() == logits[:, :9].float().argmax(-1).tolist()
