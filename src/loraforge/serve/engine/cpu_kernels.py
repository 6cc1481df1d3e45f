"""Loads the engine's C++ CPU kernels (csrc/*.cpp) once, compiling them on first use.

- `lora_add` (csrc/lora_cpu.cpp): multi-adapter LoRA for a batch sorted by adapter.
- `decode_attention` (csrc/attention_cpu.cpp): one-token attention read in place from the paged KV cache.
- `small_linear` (csrc/linear_cpu.cpp): linear layers for decode batches of 1-2 rows (see linear.py).
- `kv_write` (csrc/kv_cache_cpu.cpp): new tokens' K and V into the paged cache, in one pass.
- `argmax_rows` (csrc/sampling_cpu.cpp): greedy decoding's argmax, rows in parallel, in the model's dtype.
- `rms_norm`, `add_rms_norm`, `silu_mul`, `rope_qk` (csrc/elementwise_cpu.cpp): the model's per-token
  operations in one pass each (`add_rms_norm` with the residual add before it), rounding where
  transformers' Llama rounds (bit-equal to the PyTorch code in bf16).

torch caches the build under ~/.cache/torch_extensions, so only the first engine start on a machine pays the
~2 minute compile. The build is tuned for the host CPU (-march=native), so its name carries a digest of the
CPU's feature flags (a home directory shared with another kind of CPU gets its own build) and of the sources.
Without a C++ toolchain the engine falls back to plain PyTorch (batched matmuls, gathered attention), correct
but slower; `LORAFORGE_NO_KERNELS=1` forces that fallback.
"""

import hashlib
import logging
import os
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)
CSRC = Path(__file__).parent / "csrc"
SOURCES = sorted(CSRC.glob("*.cpp"))


def _build_tag() -> str:
    """Digest of the CPU's flags and of every source and header (torch's own check misses headers)."""
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = ""
    digest = hashlib.sha1(flags.encode())
    for path in sorted(CSRC.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:8]


@cache
def cpu_kernels():
    """The compiled module, or None where it cannot be built."""
    if os.environ.get("LORAFORGE_NO_KERNELS"):
        return None
    try:
        import ninja  # the pip package: torch looks for the `ninja` binary on PATH

        if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    try:
        from torch.utils.cpp_extension import load

        log.info("loading the engine's CPU kernels (compiled on first use, ~2 minutes)")
        return load(
            name=f"loraforge_cpu_kernels_{_build_tag()}",
            sources=[str(s) for s in SOURCES],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, no headers: slower, still correct
        log.warning("engine CPU kernels unavailable (%s); using plain PyTorch", exc)
        return None


def kernels_for(device: str | torch.device, dtype: torch.dtype):
    """The CPU kernels where they apply (CPU tensors in bf16 or fp32), else None."""
    if torch.device(device).type != "cpu" or dtype not in (torch.bfloat16, torch.float32):
        return None
    return cpu_kernels()
