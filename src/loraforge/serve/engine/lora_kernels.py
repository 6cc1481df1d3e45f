"""Loads the C++ multi-adapter LoRA kernels (csrc/lora_cpu.cpp) once, compiling them on first use.

torch caches the build under ~/.cache/torch_extensions, so only the first engine start on a machine pays the
~30-60 s compile. The build is tuned for the host CPU (-march=native), so its name carries a digest of the
CPU's feature flags: a home directory shared with another kind of CPU gets its own build. Without a C++
toolchain the engine falls back to batched matmuls (`torch.bmm`), correct but slower;
`LORAFORGE_NO_KERNELS=1` forces that fallback.
"""

import hashlib
import logging
import os
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)
SOURCE = Path(__file__).parent / "csrc" / "lora_cpu.cpp"


def _cpu_tag() -> str:
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = ""
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


@cache
def cpu_lora_kernels():
    """The compiled module (`lora_add`), or None where it cannot be built."""
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

        log.info("loading the LoRA CPU kernels (compiled on first use, ~1 minute)")
        return load(
            name=f"loraforge_lora_cpu_{_cpu_tag()}",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, no headers: slower, still correct
        log.warning("LoRA CPU kernels unavailable (%s); using torch.bmm", exc)
        return None
