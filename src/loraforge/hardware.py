"""What this machine's CPU can do: the one place that reads its name and feature flags.

The project runs on every x86-64 CPU (and other architectures, more slowly); the fast paths depend on:
- bf16 arithmetic in hardware (AMX or AVX512-BF16): where it is missing, bf16 matmuls are emulated and fp32
  is faster, so `pick_dtype` chooses fp32 (models/loading.py);
- AVX-512 BW/VL/DQ or AVX-NE-CONVERT: what oneDNN needs to pack bf16 weights (serve/model/linear.py);
- the ISA the engine's C++ kernels are compiled for (`-march=native`, serve/kernels/loader.py).
"""

import platform
from functools import cache
from pathlib import Path

import torch


@cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (`avx2`, `avx512_bf16`, `amx_tile`, ...)."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_name() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Model") or platform.processor() or platform.machine()


def has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bf16 matmuls beat fp32 several times over."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def describe() -> str:
    """One line naming the CPU and the paths it gets, for benchmarks and logs, e.g.
    `AMD EPYC, 2 cores, AVX-512 + BF16, no AMX (torch kernels: AVX512)`."""
    flags = cpu_flags()
    if "avx512f" in flags:
        isa = "AVX-512" + (" + BF16" if "avx512_bf16" in flags else "")
    elif "avx2" in flags:
        isa = "AVX2 only (no AVX-512)"
    else:
        isa = platform.machine()
    amx = "AMX" if "amx_tile" in flags else "no AMX"
    torch_isa = torch.backends.cpu.get_cpu_capability()
    return f"{cpu_name()}, {torch.get_num_threads()} threads, {isa}, {amx} (torch kernels: {torch_isa})"
