"""Base weights held in fewer bits than the activations (`EngineConfig.weights`, `loraforge serve --weights`).

A decode step of a few sequences is nothing but reading the base model's linear weights, so the bytes they
take are the step's time (benchmarks/quant_decode.py). The formats:
- `auto` (the default, serve/limits.py): 16-bit weights wherever the CPU kernels run (see `resolve_weights`):
  the activations' dtype where that is bf16, else `bf16`;
- `fp32`, `bf16`: plain; `bf16` under fp32 activations (AVX2-only CPUs, where `pick_dtype` runs fp32) holds
  the weights in bf16 and the kernels widen them to fp32 in registers (half the bytes of fp32; exact for
  checkpoints stored in bf16); batches past the kernel run oneDNN on a packed fp32 copy of those bf16
  values (model/linear.py), as plain fp32 weights do;
- `int8`: symmetric, one fp32 scale per output channel (`w = scale * q`, q in -127..127);
- `int4`: asymmetric per group of INT4_GROUP inputs, bf16 scale and min (`w = scale * q + min`, q in 0..15),
  two per byte: 4.5 bits a weight. The LM head stays int8 (as llama.cpp keeps Q4_K_M's output in 6 bits: it
  is the layer most sensitive to rounding).
Where the weights are not plain, the embedding table is held in bf16 (rows are looked up and widened), and
LoRA adapters are held in bf16 on the CPU kernels (csrc/lora_cpu.cpp widens them). The deltas are added in
the activations' dtype on top of the base layer's output, as with plain weights.

The reference arithmetic is here in plain PyTorch (`dequantize`); csrc/quant_linear_cpu.cpp computes the same
without materializing the weight (tests/serve/kernels/test_quant_linear.py).
"""

from dataclasses import dataclass

import torch

from loraforge.errors import ConfigError
from loraforge.serve.kernels.loader import kernels_unavailable
from loraforge.serve.limits import WEIGHT_FORMATS

INT4_GROUP = 32  # inputs per int4 scale/min; a multiple of 32 (the kernel's nibble block)
QUANTIZED = ("bf16", "int8", "int4")  # formats a `QuantWeight` holds (bf16 only under fp32 activations)


@dataclass
class QuantWeight:
    """One linear weight `[out_features, in_features]` in a reduced format: `data` (bf16 `[N, K]`, int8
    `[N, K]` or int4 packed into uint8 `[N, K / 2]`), `scales` (int8: fp32 `[N]`; int4: bf16 `[N, K / group,
    2]` of (scale, min); bf16: empty) and the int4 group size."""

    fmt: str
    data: torch.Tensor
    scales: torch.Tensor
    in_features: int
    group: int = 0

    @property
    def out_features(self) -> int:
        return self.data.shape[0]

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scales.numel() * self.scales.element_size()


def resolve_weights(weights: str, dtype: torch.dtype, device: str, precision: str = "auto") -> str:
    """The base weights' format for activations of `dtype` (from the `precision` setting): "plain" (the
    activations' dtype) or one of QUANTIZED. Raises ConfigError for a combination that cannot run."""
    if weights not in WEIGHT_FORMATS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, not '{weights}'")
    on_cpu = torch.device(device).type == "cpu"
    if weights == "auto":
        # fp32 activations under `precision auto` mean a CPU without bf16 arithmetic (pick_dtype). There the
        # weights (and adapters, `adapter_dtype`) are still held in bf16 where the kernels widen them: a
        # decode step reads half the bytes, and on an AVX2-only Zen 3 batch-1 decode and the LoRA of a step
        # over 32 adapters took less time, with batches past the kernel as fast (oneDNN's packed fp32 copy;
        # benchmarks/quant_decode.py, serve_throughput.py). The same rounding the engine's bf16 activations
        # apply on CPUs that have bf16. An explicit `precision fp32` keeps fp32 weights.
        fp32_by_default = on_cpu and dtype == torch.float32 and precision == "auto"
        return "bf16" if fp32_by_default and kernels_unavailable() is None else "plain"
    if weights in ("fp32", "bf16"):
        wanted = torch.float32 if weights == "fp32" else torch.bfloat16
        if wanted == dtype:
            return "plain"
        if weights == "fp32":
            raise ConfigError("weights fp32 under bf16 activations: use precision fp32 for fp32 weights")
    if not on_cpu:
        raise ConfigError(f"weights {weights} run on CPU only (C++ kernels); on {device} use bf16 or fp32")
    return weights


def adapter_dtype(weight_format: str, dtype: torch.dtype, lora_in_place: bool) -> torch.dtype:
    """The dtype LoRA adapters are held in: bf16 where the base weights are not plain and the CPU kernels run
    the LoRA (csrc/lora_cpu.cpp widens bf16 adapters under fp32 activations), else the activations'."""
    return torch.bfloat16 if weight_format != "plain" and lora_in_place else dtype


def quantize(weight: torch.Tensor, fmt: str, group: int = INT4_GROUP) -> QuantWeight:
    """`weight` `[N, K]` in `fmt` ("bf16", "int8", "int4"). int4 needs K a multiple of `group`; callers fall
    back to int8 elsewhere (`format_for`)."""
    n, k = weight.shape
    w = weight.detach().float()
    empty = torch.empty(0)
    if fmt == "bf16":
        return QuantWeight("bf16", weight.detach().to(torch.bfloat16).contiguous(), empty, k)
    if fmt == "int8":
        scale = w.abs().amax(dim=1) / 127
        q = torch.round(w / scale.clamp(min=1e-30)[:, None]).clamp(-127, 127).to(torch.int8)
        return QuantWeight("int8", q.contiguous(), scale.contiguous(), k)
    if fmt != "int4" or group % 32 or k % group:
        raise ValueError(f"cannot quantize a [{n}, {k}] weight to {fmt} (group {group})")
    wg = w.view(n, k // group, group)
    low, high = wg.amin(-1), wg.amax(-1)
    qparams = torch.stack([(high - low) / 15, low], -1).to(torch.bfloat16)  # rounded first, used as stored
    scale, low = qparams[..., 0].float(), qparams[..., 1].float()
    q = torch.round((wg - low[..., None]) / scale.clamp(min=1e-30)[..., None]).clamp(0, 15).to(torch.uint8)
    halves = q.view(n, k // 32, 2, 16)  # in each block of 32, weight i and i + 16 share a byte
    packed = (halves[:, :, 0] | (halves[:, :, 1] << 4)).reshape(n, k // 2)
    return QuantWeight("int4", packed.contiguous(), qparams.contiguous(), k, group)


def format_for(fmt: str, in_features: int, group: int = INT4_GROUP) -> str:
    """`fmt`, or int8 for an int4 layer whose input size is not a multiple of the group."""
    return "int8" if fmt == "int4" and in_features % group else fmt


def dequantize(qw: QuantWeight) -> torch.Tensor:
    """The weight `[N, K]` in fp32: the reference the kernels are tested against."""
    if qw.fmt == "bf16":
        return qw.data.float()
    if qw.fmt == "int8":
        return qw.data.float() * qw.scales[:, None]
    n, k = qw.out_features, qw.in_features
    blocks = qw.data.view(n, k // 32, 16)
    q = torch.stack([blocks & 15, blocks >> 4], dim=2).reshape(n, k // qw.group, qw.group).float()
    params = qw.scales.float()
    return (q * params[..., 0:1] + params[..., 1:2]).view(n, k)
