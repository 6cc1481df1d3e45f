"""Attention over the paged KV cache: causal self-attention for prefills, cached attention for decodes."""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from loraforge.serve.engine.kv_cache import KVCache


@dataclass
class AttentionMetadata:
    """Where each token of a flat batch lives: its cache slot, its sequence, and (decode) the block tables."""

    is_prefill: bool
    slot_mapping: torch.Tensor  # [tokens] flat cache slot of each new token
    last_token_index: torch.Tensor  # [sequences] index in the flat batch of each sequence's last token
    # prefill: sequences padded to the longest one, to run one causal SDPA call
    pad_index: torch.Tensor | None = None  # [sequences, max_len] flat token index (padding repeats a token)
    unpad_index: torch.Tensor | None = None  # [tokens] index into the padded [sequences * max_len]
    # decode: one new token per sequence
    block_tables: torch.Tensor | None = None  # [sequences, max_blocks]
    context_lens: torch.Tensor | None = None  # [sequences] tokens in the cache, the new one included
    kernels: Any = None  # the C++ CPU kernels (cpu_kernels.py): attention read in place from the cache
    # without kernels, the PyTorch path gathers whole blocks and masks what lies past each sequence's end
    mask: torch.Tensor | None = None  # [sequences, 1, 1, max_blocks * block_size], True = attend
    context_len: int = 0  # single-sequence decode: exact length, so no mask is needed


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, meta: AttentionMetadata, kv: KVCache
) -> torch.Tensor:
    """q `[tokens, heads, dim]`, k/v `[tokens, kv_heads, dim]` of the new tokens -> `[tokens, heads, dim]`."""
    kv.write(layer, meta.slot_mapping, k, v)
    if meta.is_prefill:
        # No prefix caching: a prefill always starts at position 0, so its own K/V are the whole context.
        if meta.pad_index is None:  # a single sequence: no padding needed
            qb, kb, vb = (t.unsqueeze(0).transpose(1, 2) for t in (q, k, v))
        else:
            qb, kb, vb = (t[meta.pad_index].transpose(1, 2) for t in (q, k, v))
        # Right padding is harmless under a causal mask: real tokens never attend to later (padded) ones.
        out = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=True)
        out = out.transpose(1, 2).reshape(-1, q.shape[1], q.shape[2])
        return out if meta.pad_index is None else out[meta.unpad_index]
    if meta.kernels is not None:
        scale = q.shape[-1] ** -0.5
        return meta.kernels.decode_attention(
            q, kv.k[layer], kv.v[layer], meta.block_tables, meta.context_lens, scale
        )
    kc, vc = kv.gather(layer, meta.block_tables)
    if meta.mask is None:
        kc, vc = kc[:, : meta.context_len], vc[:, : meta.context_len]
    return decode_attention(q, kc, vc, meta.mask)


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """One query per sequence: q `[batch, heads, dim]`, k/v `[batch, len, kv_heads, dim]` -> like q.

    Two batched matmuls over query-head groups rather than SDPA: on CPU, SDPA with a mask in bf16 takes a slow
    path (~15x slower at batch 64 here). Softmax in fp32, like transformers' eager attention.
    """
    b, heads, dim = q.shape
    kv_heads = k.shape[2]
    qg = q.view(b, kv_heads, heads // kv_heads, dim)  # heads h*g..h*g+g-1 share kv head h, as in HF
    scores = torch.matmul(qg, k.permute(0, 2, 3, 1)) * dim**-0.5  # [b, kv_heads, group, len]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.float().softmax(dim=-1).to(q.dtype)
    return torch.matmul(probs, v.transpose(1, 2)).reshape(b, heads, dim)
