"""A base-model linear layer, `x @ weight.T (+ bias)`, run in the fastest form the device has for the batch.

On CPU (bf16/fp32) there are two:
- up to SMALL_BATCH_ROWS rows (a decode step of one or two sequences), the C++ matrix-vector kernel
  (`small_linear`, csrc/linear_cpu.cpp), which streams the plain weight from memory ~1.5x faster than
  packed oneDNN and ~2x faster than `F.linear`;
- more rows, oneDNN with the weight packed once, at load, into its own blocked layout. `F.linear` re-lays the
  weight out on every call; packed, a batch-64 decode step's matmuls take ~20% less time in bf16 and ~35%
  less in fp32, and the bf16 results are bit-identical (benchmarks/cpu_kernels.py, case 3).
Elsewhere (CUDA, fp16) it is `F.linear`.

Holding both forms doubles the weights' memory. Where that is too much (`keep_plain=False`, see
`Llama.__init__`), the plain weight is dropped once packed, and every batch size runs the packed form.
"""

import os

import torch
import torch.nn.functional as F

SMALL_BATCH_ROWS = 2  # up to this many rows the matrix-vector kernel beats packed oneDNN (cpu_kernels.py)
PLAIN_COPY_MAX_SHARE = 0.25  # of the machine's memory, for the linear weights when held in both forms


def keep_plain_copy(weight_bytes: int) -> bool:
    """Whether linear weights of `weight_bytes` may be held in both forms: while they take at most a
    quarter of the machine's memory (SmolLM2-135M: 248 MiB; a 7B model's 13 GiB in bf16 would take 26)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no way to tell, keep the fast path
        return True
    return weight_bytes <= PLAIN_COPY_MAX_SHARE * total


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
    """One weight `[out, in]` (and optional bias) with the forms it is run in; `kernels` from cpu_kernels.
    `keep_plain=False`: once packed, drop the plain weight (half the memory, slower 1-2 row batches)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, kernels=None, keep_plain=True):
        self.shape, self.dtype = weight.shape, weight.dtype
        self.bias = bias
        self.kernels = kernels
        self.packed = pack(weight)
        self.weight = weight if keep_plain or self.packed is None else None

    @property
    def nbytes(self) -> int:
        """Memory of the weight's forms held (the packed form counted as the plain one's size)."""
        size = self.shape.numel() * self.dtype.itemsize
        return size * ((self.weight is not None) + (self.packed is not None))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None and self.weight is not None and x.shape[0] <= SMALL_BATCH_ROWS:
            out = self.kernels.small_linear(x, self.weight)
            return out if self.bias is None else out + self.bias
        if self.packed is not None:
            return packed_linear(x, self.packed, self.bias)
        return F.linear(x, self.weight, self.bias)
