"""The operations the model runs per token, behind one interface chosen once per device and dtype.

`ops_for(device, dtype)` gives `KernelOps` (the C++ CPU kernels of csrc/, see loader.py) for CPU activations
in bf16 or fp32 where the kernels are built, else `TorchOps` (plain PyTorch: CUDA, fp16, no toolchain,
`LORAFORGE_NO_KERNELS=1`). The model, the KV-cache write, the sampler and the LoRA weights each hold the ops
object they were built with and call it; nothing else asks which path it is on. Both give the same results
(the kernels round where the PyTorch code rounds; tests/serve/kernels check each op against it).
"""

from functools import cache

import torch
import torch.nn.functional as F

from loraforge.serve.kernels.loader import cpu_kernels
from loraforge.serve.model.quant import QuantWeight, dequantize

# Up to this many rows the matrix-vector kernel beats packed oneDNN (benchmarks/cpu_kernels.py, case 3).
SMALL_BATCH_ROWS = 2
# Up to this many rows `quant_linear` reads bf16/int8/int4 weights in place; more rows are compute-bound and
# run on the weight widened to the activations' dtype (benchmarks/quant_decode.py, the kernel-rows table).
QUANT_KERNEL_ROWS = 4
# How `decode_layers` runs each weight (csrc/decode_cpu.cpp's `Format`): `small_linear` or `quant_linear`.
DECODE_PLAIN, DECODE_QUANT = 0, 1


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in fp32 like transformers: bf16 variance loses too much precision."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on `[tokens, heads, head_dim]` with cos/sin `[tokens, 1, head_dim]`."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


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


class TorchOps:
    """Plain PyTorch, for every device and dtype."""

    name = "torch"
    # Batches of up to this many rows run `small_linear` (none here: packed oneDNN or F.linear, linear.py).
    small_linear_rows = 0
    # Whether `lora_add` reads each adapter's weights in place for batches sorted by adapter; without it the
    # LoRA runs as batched matmuls over gathered weights (lora/weights.py).
    lora_in_place = False
    # Batches of up to this many rows read reduced-format weights (model/quant.py) in place (none here).
    quant_kernel_rows = 0
    # Whether a prefill over a cached prefix runs `decode_attention` with one query per new token (each
    # seeing its sequence's cache up to itself) instead of a masked SDPA over gathered blocks (attention.py).
    paged_prefill = False
    # Whether `decode_layers` runs a decode step without adapters through every layer in one call.
    fused_decode = False

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return rms_norm(x, weight, eps)

    def add_rms_norm(self, h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
        """`h += delta` in place (the residual stream), then RMSNorm of h."""
        h.add_(delta)
        return rms_norm(h, weight, eps)

    def rope_qk(
        self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q `[tokens, heads, dim]` and k `[tokens, kv_heads, dim]` of the fused projection, rotated;
        cos/sin `[tokens, 1, dim]`."""
        dim = cos.shape[-1]
        q, k = qkv[:, : heads * dim], qkv[:, heads * dim : (heads + kv_heads) * dim]
        q = apply_rope(q.reshape(-1, heads, dim), cos, sin)
        return q, apply_rope(k.reshape(-1, kv_heads, dim), cos, sin)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """`silu(gate) * up` for the fused `[gate | up]` projection."""
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def small_linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight)

    def quant_linear(self, x: torch.Tensor, qw: QuantWeight) -> torch.Tensor:
        """`x @ W^T` for a weight in a reduced format: here the reference, dequantize then matmul."""
        return F.linear(x, self.dequantize(qw, x.dtype))

    def dequantize(self, qw: QuantWeight, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(qw).to(dtype)

    def kv_write(self, kv, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K/V of new tokens (`[tokens, kv_heads, head_dim]`) at flat cache positions `slots`."""
        # Advanced indices around slices: the indexed result is [tokens, kv_heads, head_dim], like k.
        kv.k[layer][slots // kv.block_size, :, :, slots % kv.block_size] = k
        n, kvh, d = kv.v.shape[1] * kv.v.shape[2], kv.v.shape[3], kv.v.shape[4]
        kv.v[layer].view(n, kvh, d).index_copy_(0, slots, v)

    def decode_mask(self, context_lens: torch.Tensor, span: int) -> torch.Tensor | None:
        """What `decode_attention` needs to ignore the cache past each sequence's end (batches of 2+):
        `[sequences, 1, 1, span]`, True = attend."""
        positions = torch.arange(span, device=context_lens.device)
        return (positions[None, :] < context_lens[:, None])[:, None, None, :]

    def decode_attention(self, q: torch.Tensor, kv, layer: int, meta) -> torch.Tensor:
        """One new token per sequence, attending to its whole cached context: whole blocks are gathered
        and masked past each sequence's end."""
        kc, vc = kv.gather(layer, meta.block_tables)
        if meta.mask is None:
            kc, vc = kc[:, : meta.context_len], vc[:, : meta.context_len]
        return decode_attention(q, kc, vc, meta.mask)

    def argmax_rows(self, logits: torch.Tensor) -> list[int]:
        return logits.float().argmax(dim=-1).tolist()

    def lora_add(self, x, a_per_module, b_per_module, widths, entries_per_module, row_start, out) -> None:
        raise NotImplementedError("the PyTorch LoRA path is LoRAWeights' batched matmuls")


class KernelOps(TorchOps):
    """The C++ CPU kernels (one pass per op, read in place), for CPU tensors in bf16 or fp32."""

    name = "cpu-kernels"
    small_linear_rows = SMALL_BATCH_ROWS
    lora_in_place = True
    quant_kernel_rows = QUANT_KERNEL_ROWS
    paged_prefill = True  # SDPA with a mask takes a slow path on CPU (benchmarks/eval_throughput.py)
    fused_decode = True

    def __init__(self, kernels) -> None:
        self.kernels = kernels

    def rms_norm(self, x, weight, eps):
        return self.kernels.rms_norm(x, weight, eps)  # one pass instead of eight ops; the same roundings

    def add_rms_norm(self, h, delta, weight, eps):
        return self.kernels.add_rms_norm(h, delta, weight, eps)

    def rope_qk(self, qkv, cos, sin, heads, kv_heads):
        return self.kernels.rope_qk(qkv, cos.squeeze(1), sin.squeeze(1), heads, kv_heads)

    def silu_mul(self, gate_up):
        return self.kernels.silu_mul(gate_up)

    def small_linear(self, x, weight):
        return self.kernels.small_linear(x, weight)

    def quant_linear(self, x, qw):
        return self.kernels.quant_linear(x, qw.data, qw.scales, qw.group)  # read in place

    def dequantize(self, qw, dtype):
        return self.kernels.dequantize(qw.data, qw.scales, qw.group, qw.in_features, dtype == torch.bfloat16)

    def kv_write(self, kv, layer, slots, k, v):
        self.kernels.kv_write(kv.k[layer], kv.v[layer], slots, k, v)  # one pass instead of ~6 ops a layer

    def decode_mask(self, context_lens, span):
        return None  # the kernel reads each sequence's exact length

    def decode_attention(self, q, kv, layer, meta):
        scale = q.shape[-1] ** -0.5
        return self.kernels.decode_attention(
            q, kv.k[layer], kv.v[layer], meta.block_tables, meta.context_lens, scale
        )

    def decode_layers(self, h, x, cos, sin, meta, kv, plan) -> torch.Tensor:
        """Every decoder layer of a decode step without adapters, in one C++ loop (csrc/decode_cpu.cpp);
        `plan` is the model's `DecodePlan` (llama.py). Updates and returns the residual stream `h`."""
        return self.kernels.decode_layers(
            h, x, cos.squeeze(1), sin.squeeze(1), meta.slot_mapping, meta.block_tables, meta.context_lens,
            kv.k, kv.v, plan.norms, plan.weights, plan.scales, plan.groups, plan.formats, plan.biases,
            plan.heads, plan.kv_heads, plan.eps,
        )  # fmt: skip

    def argmax_rows(self, logits):
        return self.kernels.argmax_rows(logits).tolist()  # rows in parallel, read in place

    def lora_add(self, x, a_per_module, b_per_module, widths, entries_per_module, row_start, out):
        self.kernels.lora_add(x, a_per_module, b_per_module, widths, entries_per_module, row_start, out)


TORCH_OPS = TorchOps()


@cache
def _kernel_ops(kernels) -> KernelOps:
    return KernelOps(kernels)


def ops_for(device: str | torch.device, dtype: torch.dtype) -> TorchOps:
    """The kernels where they apply (CPU tensors in bf16 or fp32, and built), else plain PyTorch."""
    if torch.device(device).type != "cpu" or dtype not in (torch.bfloat16, torch.float32):
        return TORCH_OPS
    kernels = cpu_kernels()
    return TORCH_OPS if kernels is None else _kernel_ops(kernels)
