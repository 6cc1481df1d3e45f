"""A base-model linear layer, `x @ weight.T (+ bias)`, run in the fastest form the device has for the batch.

On CPU (bf16/fp32) there are two:
- up to `ops.small_linear_rows` rows (a decode step of one or two sequences), the C++ matrix-vector kernel
  (`small_linear`, csrc/linear_cpu.cpp), which streams the plain weight from memory ~1.5x faster than
  packed oneDNN and ~2x faster than `F.linear`;
- more rows, oneDNN with the weight packed once, at load, into its own blocked layout. `F.linear` re-lays the
  weight out on every call; packed, a batch-64 decode step's matmuls take ~20% less time in bf16 and ~35%
  less in fp32, and the bf16 results are bit-identical (benchmarks/cpu_kernels.py, case 3).
Elsewhere (CUDA, fp16) it is `F.linear`.

Where oneDNN cannot pack the dtype on this CPU (bf16 without AVX-512, see `onednn_packs`), batches of 3+
rows run `F.linear`. Holding both forms doubles the weights' memory. Where that is too much
(`keep_plain=False`, see `Llama`), the plain weight is dropped once packed, and every batch size
runs the packed form.

`QuantLinear` is the same layer over a weight held in a reduced format (`--weights`, model/quant.py).
"""

import os
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from loraforge.serve.kernels.ops import DECODE_PLAIN, DECODE_QUANT, TORCH_OPS, TorchOps
from loraforge.serve.model.quant import QuantWeight, dequantize, format_for, quantize

ROW_BUCKET, LARGE_ROWS, ROW_BUCKET_LARGE = 16, 256, 64  # packed-path batch shapes, see padded_rows
PLAIN_COPY_MAX_SHARE = 0.25  # of the machine's memory, for the linear weights when held in both forms


def keep_plain_copy(weight_bytes: int) -> bool:
    """Whether linear weights of `weight_bytes` may be held in both forms: while they take at most a
    quarter of the machine's memory (SmolLM2-135M: 248 MiB; a 7B model's 13 GiB in bf16 would take 26)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no way to tell, keep the fast path
        return True
    return weight_bytes <= PLAIN_COPY_MAX_SHARE * total


@cache
def onednn_packs(dtype: torch.dtype) -> bool:
    """Whether this CPU and torch build can pack weights of `dtype` for oneDNN, tried once on a small weight.
    fp32 packs everywhere oneDNN runs; bf16 needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT (not on AVX2-only
    CPUs such as AMD Zen 3), where the layer keeps running `F.linear` (or the small-batch kernel)."""
    if dtype not in (torch.bfloat16, torch.float32) or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), 16)
    except (AttributeError, RuntimeError):  # the op is torch-internal (its inductor's); it may be missing
        return False
    return True


def pack(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's blocked copy of `weight` `[out, in]` (an opaque mkldnn tensor), laid out for batched rows;
    None where this CPU or torch build cannot make one (see `onednn_packs`)."""
    if weight.device.type != "cpu" or not onednn_packs(weight.dtype):
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight, 64)


def padded_rows(rows: int) -> int:
    """`rows` rounded up to a multiple of ROW_BUCKET (ROW_BUCKET_LARGE past LARGE_ROWS). oneDNN keeps a
    compiled primitive per input shape, and a server sees every batch size and prompt length: unpadded, its
    memory kept growing under a mixed load (tests/reliability/test_load.py). Few shapes bound it; the padded
    rows cost little where reading the weights dominates."""
    step = ROW_BUCKET if rows <= LARGE_ROWS else ROW_BUCKET_LARGE
    return -(-rows // step) * step


@dataclass(frozen=True)
class DecodeForm:
    """A layer's weight as `ops.decode_layers` runs it: `weight`, `scales` and `group` for its kernel
    (`fmt`: kernels/ops.py's DECODE_*), up to `rows` rows (where this path beats the batched one)."""

    weight: torch.Tensor
    scales: torch.Tensor
    group: int
    fmt: int
    rows: int


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ W^T (+ bias)` on oneDNN's packed form of W, the rows padded to a bucket (`padded_rows`)."""
    rows = x.shape[0]
    padded = padded_rows(rows)
    if padded != rows:
        x = F.pad(x, (0, 0, 0, padded - rows))
    out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return out if padded == rows else out[:rows]


class Linear(torch.nn.Module):
    """One weight `[out, in]` (and optional bias) with the forms it is run in; `ops` from kernels/ops.py.
    `keep_plain=False`: once packed, drop the plain weight (half the memory, slower 1-2 row batches).

    The weight and bias are (frozen) parameters, so `.parameters()`, `state_dict()` and `.to()` see them;
    the packed form is derived from the weight, and `.to()` packs it again."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        ops: TorchOps = TORCH_OPS,
        keep_plain: bool = True,
    ):
        super().__init__()
        self.shape = weight.shape
        self.ops = ops
        self.packed = pack(weight)
        kept = weight if keep_plain or self.packed is None else None
        self.weight = frozen(kept)
        self.bias = frozen(bias)
        self._dtype = weight.dtype

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype if self.weight is not None else self._dtype

    @property
    def nbytes(self) -> int:
        """Memory of the weight's forms held (the packed form counted as the plain one's size)."""
        size = self.shape.numel() * self.dtype.itemsize
        return size * ((self.weight is not None) + (self.packed is not None))

    def _apply(self, fn, recurse=True):
        if self.weight is None:
            raise RuntimeError("this layer holds its weight only in oneDNN's packed form; it cannot be moved")
        super()._apply(fn, recurse)
        self.packed = pack(self.weight.data)  # the packed form follows the weight's new dtype and device
        return self

    def decode_form(self) -> DecodeForm | None:
        """The plain weight for `small_linear`; None without one (held packed only) or without the kernel."""
        if self.weight is None or self.ops.small_linear_rows == 0:
            return None
        return DecodeForm(self.weight, torch.empty(0), 0, DECODE_PLAIN, self.ops.small_linear_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None and x.shape[0] <= self.ops.small_linear_rows:
            out = self.ops.small_linear(x, self.weight)
            return out if self.bias is None else out + self.bias
        if self.packed is not None:
            return packed_linear(x, self.packed, self.bias)
        return F.linear(x, self.weight, self.bias)


class QuantLinear(torch.nn.Module):
    """A base linear layer whose weight is held in a reduced format (model/quant.py: bf16 under fp32
    activations, int8, int4), run by `ops.quant_linear` up to `ops.quant_kernel_rows` rows (the weight read
    in its small form, widened in registers) and, for more rows, as `F.linear` on the weight widened to the
    activations' dtype: there the matmul's arithmetic, not the read, is the time, and it is shared by the
    rows. `packed=True` (bf16 only): more rows run oneDNN on a packed fp32 copy of the bf16 values instead,
    made once (widening per call cost a batch-64 step ~15%, benchmarks/quant_decode.py), so every batch size
    computes with the same weights. The held tensors are not parameters: a quantized layer is built for its
    device and dtype and cannot be moved or cast."""

    def __init__(
        self,
        qweight: QuantWeight,
        bias: torch.Tensor | None = None,
        ops: TorchOps = TORCH_OPS,
        packed: bool = False,
    ):
        super().__init__()
        self.qweight = qweight
        self.shape = torch.Size((qweight.out_features, qweight.in_features))
        self.ops = ops
        self.bias = frozen(bias)
        if packed and qweight.fmt != "bf16":
            raise ValueError(f"only bf16 weights keep a packed fp32 copy, not {qweight.fmt}")
        self.packed = pack(dequantize(qweight)) if packed else None

    @classmethod
    def quantize(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, fmt: str, ops: TorchOps, packed: bool = False
    ):
        """The layer over `weight` `[out, in]` held in `fmt` (int8 where int4's group does not divide in)."""
        return cls(quantize(weight, format_for(fmt, weight.shape[1])), bias, ops, packed)

    @property
    def fmt(self) -> str:
        return self.qweight.fmt

    @property
    def nbytes(self) -> int:
        """Memory of the weight's forms held (a packed copy counted as fp32)."""
        packed = 0 if self.packed is None else self.shape.numel() * 4
        return self.qweight.nbytes + packed

    def _apply(self, fn, recurse=True):
        raise RuntimeError(
            f"this layer holds its weight in {self.fmt}; it cannot be moved or cast (load the model again)"
        )

    def decode_form(self) -> DecodeForm | None:
        """The weight as `ops.quant_linear` reads it; None without the kernel."""
        qw, rows = self.qweight, self.ops.quant_kernel_rows
        return DecodeForm(qw.data, qw.scales, qw.group, DECODE_QUANT, rows) if rows else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.ops.quant_kernel_rows:
            out = self.ops.quant_linear(x, self.qweight)
        elif self.packed is not None:
            return packed_linear(x, self.packed, self.bias)
        else:
            out = F.linear(x, self.ops.dequantize(self.qweight, x.dtype))
        return out if self.bias is None else out + self.bias


def frozen(tensor: torch.Tensor | None) -> torch.nn.Parameter | None:
    """A parameter without gradient around `tensor` (the same storage), or None."""
    if tensor is None or isinstance(tensor, torch.nn.Parameter):
        return tensor
    return torch.nn.Parameter(tensor, requires_grad=False)
