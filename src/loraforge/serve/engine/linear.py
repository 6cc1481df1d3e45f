"""A base-model linear layer, `x @ weight.T (+ bias)`, run in the fastest form the device has for the batch.

On CPU (bf16/fp32) there are two:
- up to SMALL_BATCH_ROWS rows (a decode step of one or two sequences), the C++ matrix-vector kernel
  (`small_linear`, csrc/linear_cpu.cpp), which streams the plain weight from memory ~1.5x faster than
  packed oneDNN and ~2x faster than `F.linear`;
- more rows, oneDNN with the weight packed once, at load, into its own blocked layout. `F.linear` re-lays the
  weight out on every call; packed, a batch-64 decode step's matmuls take ~20% less time in bf16 and ~35%
  less in fp32, and the bf16 results are bit-identical (benchmarks/cpu_kernels.py, case 3).
Elsewhere (CUDA, fp16) it is `F.linear`.
"""

import torch
import torch.nn.functional as F

SMALL_BATCH_ROWS = 2  # up to this many rows the matrix-vector kernel beats packed oneDNN (cpu_kernels.py)


def can_pack(weight: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu"
        and weight.dtype in (torch.bfloat16, torch.float32)
        and torch.backends.mkldnn.is_available()
    )


def pack(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's blocked copy of `weight` `[out, in]` (an opaque mkldnn tensor), laid out for batched rows;
    None where this torch build cannot make one (these ops are torch's own, used by its inductor)."""
    if not can_pack(weight):
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, 64)
    except (AttributeError, RuntimeError):
        return None


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class Linear:
    """One weight `[out, in]` (and optional bias) with the forms it is run in; `kernels` from cpu_kernels."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, kernels=None):
        self.weight = weight
        self.bias = bias
        self.kernels = kernels
        self.packed = pack(weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None and x.shape[0] <= SMALL_BATCH_ROWS:
            out = self.kernels.small_linear(x, self.weight)
            return out if self.bias is None else out + self.bias
        if self.packed is not None:
            return packed_linear(x, self.packed, self.bias)
        return F.linear(x, self.weight, self.bias)
