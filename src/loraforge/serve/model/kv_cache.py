"""Paged KV cache: fixed-size blocks in one preallocated tensor, handed out to sequences as they grow."""

import torch


class KVCache:
    """K and V for every layer in fixed-size blocks; a token's slot is `block * block_size + offset`
    (written by `ops.kv_write`, kernels/ops.py).

    V is `[layers, blocks, block_size, kv_heads, head_dim]` (token rows). K is stored transposed within each
    block, `[layers, blocks, kv_heads, head_dim, block_size]`: decode attention then computes a query's
    scores against a whole block as multiply-adds into a vector over the block's tokens (as vLLM's paged
    attention kernels lay keys out), with no per-token horizontal sum."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: str = "cpu",
    ):
        self.k = torch.zeros(
            (num_layers, num_blocks, num_kv_heads, head_dim, block_size), dtype=dtype, device=device
        )
        self.v = torch.zeros(
            (num_layers, num_blocks, block_size, num_kv_heads, head_dim), dtype=dtype, device=device
        )
        self.block_size = block_size
        self.num_blocks = num_blocks

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype) -> int:
        return (
            2
            * num_layers
            * block_size
            * num_kv_heads
            * head_dim
            * torch.empty((), dtype=dtype).element_size()
        )

    def gather(self, layer: int, block_tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of whole sequences via block tables: `[batch, blocks * block_size, kv_heads, head_dim]`."""
        b, nb = block_tables.shape
        shape = (b, nb * self.block_size, *self.v.shape[3:])
        k = self.k[layer][block_tables].permute(0, 1, 4, 2, 3).reshape(shape)  # keys back to token rows
        return k, self.v[layer][block_tables].view(shape)
