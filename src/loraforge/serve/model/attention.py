"""Attention over the paged KV cache: causal self-attention for prefills, cached attention for decodes."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from loraforge.serve.kernels.ops import TorchOps
from loraforge.serve.model.kv_cache import KVCache


@dataclass
class AttentionMetadata:
    """Where each token of a flat batch lives: its cache slot (`block * block_size + offset`: a position in
    the paged KV cache), its sequence, and (decode) the block tables."""

    is_prefill: bool
    slot_mapping: torch.Tensor  # [tokens] flat cache slot of each new token
    last_token_index: torch.Tensor  # [sequences] index in the flat batch of each sequence's last token
    # prefill: sequences padded to the longest one, to run one causal SDPA call
    pad_index: torch.Tensor | None = None  # [sequences, max_len] flat token index (padding repeats a token)
    unpad_index: torch.Tensor | None = None  # [tokens] index into the padded [sequences * max_len]
    # decode: one new token per sequence
    block_tables: torch.Tensor | None = None  # [sequences, max_blocks]
    context_lens: torch.Tensor | None = None  # [sequences] tokens in the cache, the new one included
    # plain-PyTorch decode (TorchOps) gathers whole blocks and masks what lies past each sequence's end
    mask: torch.Tensor | None = None  # [sequences, 1, 1, max_blocks * block_size], True = attend
    context_len: int = 0  # single-sequence decode: exact length, so no mask is needed


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layer: int,
    meta: AttentionMetadata,
    kv: KVCache,
    ops: TorchOps,
) -> torch.Tensor:
    """q `[tokens, heads, dim]`, k/v `[tokens, kv_heads, dim]` of the new tokens -> `[tokens, heads, dim]`."""
    ops.kv_write(kv, layer, meta.slot_mapping, k, v)
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
    return ops.decode_attention(q, kv, layer, meta)
