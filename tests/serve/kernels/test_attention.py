"""Decode attention read in place from the paged cache (C++ kernel) equals the gathered PyTorch path."""

import pytest
import torch

from loraforge.serve.kernels.ops import decode_attention
from loraforge.serve.model.kv_cache import KVCache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "head_dim, block_size, heads, kv_heads",
    [
        (64, 16, 9, 3),  # compiled sizes, SmolLM2's heads: one group of 3 query heads per kv head
        (128, 16, 14, 2),  # compiled sizes, groups of 2 heads: 7 per kv head (Qwen2-0.5B's GQA)
        (64, 4, 9, 3),  # compiled for small blocks (evaluation's prefix cache)
        (128, 8, 14, 2),
        (24, 4, 6, 2),  # runtime sizes
    ],
)
def test_kernel_equals_gathered_attention(kernels, dtype, head_dim, block_size, heads, kv_heads):
    g = torch.Generator().manual_seed(0)
    num_blocks = 40
    kv = KVCache(2, num_blocks, block_size, kv_heads, head_dim, torch.float32)
    kv.k.normal_(generator=g)
    kv.v.normal_(generator=g)
    # Lengths: one token, a block exactly, a block and one, several blocks; tables scattered, zero-padded.
    lens = torch.tensor([1, block_size, block_size + 1, 3 * block_size + 1])
    tables = torch.zeros(len(lens), 4, dtype=torch.long)
    free = torch.randperm(num_blocks, generator=g).tolist()
    for b, n in enumerate(lens.tolist()):
        for i in range(-(-n // block_size)):
            tables[b, i] = free.pop()
    q = torch.randn(len(lens), heads, head_dim, generator=g)
    kc, vc = kv.gather(1, tables)
    mask = (torch.arange(tables.shape[1] * block_size)[None, :] < lens[:, None])[:, None, None, :]
    expected = decode_attention(q.double(), kc.double(), vc.double(), mask)

    got = kernels.decode_attention(
        q.to(dtype), kv.k[1].to(dtype), kv.v[1].to(dtype), tables, lens, head_dim**-0.5
    )
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)
    # A long context: many blocks, a long softmax row.
    long_kv = KVCache(1, 64, 16, kv_heads, head_dim, torch.float32)
    long_kv.k.normal_(generator=g).mul_(3)  # sharper softmax
    long_kv.v.normal_(generator=g)
    long_tables = torch.randperm(64, generator=g)[:60].view(1, 60)
    long_lens = torch.tensor([947])
    kc, vc = long_kv.gather(0, long_tables)
    mask = (torch.arange(960)[None, :] < long_lens[:, None])[:, None, None, :]
    q1 = q[:1]
    expected = decode_attention(q1.double(), kc.double(), vc.double(), mask)
    got = kernels.decode_attention(
        q1.to(dtype), long_kv.k[0].to(dtype), long_kv.v[0].to(dtype), long_tables, long_lens, head_dim**-0.5
    )
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


def test_kernel_rejects_lengths_past_the_block_table(kernels):
    kv = KVCache(1, 4, 4, 1, 8, torch.float32)
    q = torch.zeros(1, 2, 8)
    with pytest.raises(RuntimeError, match="context lengths"):
        table = torch.zeros(1, 2, dtype=torch.long)  # 2 blocks of 4: at most 8 tokens
        kernels.decode_attention(q, kv.k[0], kv.v[0], table, torch.tensor([9]), 1.0)
