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
    # decode, and prefills over a cached prefix (block_manager.py): where each sequence's K/V are. With
    # `ops.paged_prefill`, such a prefill has a row per new token instead (`[tokens, ...]`), as if each were
    # a decode query seeing the cache up to itself.
    block_tables: torch.Tensor | None = None  # [sequences, max_blocks]
    context_lens: torch.Tensor | None = None  # [sequences] tokens in the cache, the new one included
    # plain-PyTorch decode (TorchOps) gathers whole blocks and masks what lies past each sequence's end
    # (also a prefill over a cached prefix: [sequences, 1, max_new_tokens, max_blocks * block_size])
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
    if meta.is_prefill and meta.context_lens is None:
        qb = q.unsqueeze(0) if meta.pad_index is None else q[meta.pad_index]  # [seqs, new tokens, heads, dim]
        if meta.block_tables is not None:
            # Some prompts start in the prefix cache: attend to the cache (cached prefix + the new K/V just
            # written), with the causal mask shifted by each sequence's cached length.
            kb, vb = kv.gather(layer, meta.block_tables)
            out = F.scaled_dot_product_attention(
                qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2), meta.mask, enable_gqa=True
            )
        else:
            # No cached prefix: a prompt's own K/V are its whole context.
            kb, vb = (t.unsqueeze(0) if meta.pad_index is None else t[meta.pad_index] for t in (k, v))
            # Right padding is harmless under a causal mask: real tokens never attend to later (padded) ones.
            out = F.scaled_dot_product_attention(
                qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2), is_causal=True, enable_gqa=True
            )
        out = out.transpose(1, 2).reshape(-1, q.shape[1], q.shape[2])
        return out if meta.pad_index is None else out[meta.unpad_index]
    # Decode, or a prefill over a cached prefix with `ops.paged_prefill`: a query per new token.
    return ops.decode_attention(q, kv, layer, meta)
