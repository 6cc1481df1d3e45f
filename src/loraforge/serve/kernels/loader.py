"""Loads the engine's C++ CPU kernels (csrc/*.cpp) once, compiling them on first use.

- `lora_add` (csrc/lora_cpu.cpp): multi-adapter LoRA for a batch sorted by adapter.
- `decode_attention` (csrc/attention_cpu.cpp): one-token attention read in place from the paged KV cache.
- `small_linear` (csrc/linear_cpu.cpp): linear layers for decode batches of 1-2 rows (see linear.py).
- `kv_write` (csrc/kv_cache_cpu.cpp): new tokens' K and V into the paged cache, in one pass.
- `argmax_rows` (csrc/sampling_cpu.cpp): greedy decoding's argmax, rows in parallel, in the model's dtype.
- `rms_norm`, `add_rms_norm`, `silu_mul`, `rope_qk` (csrc/elementwise_cpu.cpp): the model's per-token
  operations in one pass each (`add_rms_norm` with the residual add before it), rounding where
  transformers' Llama rounds (bit-equal to the PyTorch code in bf16).
- `decode_layers` (csrc/decode_cpu.cpp): a decode step of a few rows without adapters through every layer,
  calling the kernels above in one C++ loop.

The build goes to torch's extension cache (~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR): only the
first start on a machine pays the ~2 minute compile (`make install` does it up front with
`cpu_kernels.main()`). It is tuned for the host CPU (`-march=native`: AVX-512 where there is one, AVX2
elsewhere; portable vector types, intrinsics only in common.h and quant_linear_cpu.cpp), so its name carries a
digest of the CPU's flags, of the target and of the sources (a home directory shared with another kind of CPU
gets its own build). Where the compiler does not know `-march=native`, or with
`LORAFORGE_KERNEL_MARCH=portable`, it builds for the compiler's default target; `LORAFORGE_KERNEL_MARCH=NAME`
builds for `-march=NAME`.

Which code path a model uses is chosen once, in ops.py. Without a C++ toolchain the engine falls back to
plain PyTorch (batched matmuls, gathered attention), correct
but slower; `LORAFORGE_NO_KERNELS=1` forces that fallback. A compile error is not a missing toolchain: it
raises `KernelBuildError` with the compiler's output.
"""

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from loraforge.hardware import cpu_flags, describe

log = logging.getLogger(__name__)
CSRC = Path(__file__).parent / "csrc"
SOURCES = sorted(CSRC.glob("*.cpp"))
BUILD_WAIT_S = 900  # longest wait for another process's build (a cold build takes minutes on 2 busy cores)


class KernelBuildError(RuntimeError):
    """The kernels failed to compile or load although a toolchain is there: a bug to fix, not to hide."""


def _use_ninja_from_pip() -> None:
    """torch looks for the `ninja` binary on PATH; the pip package ships one in its own folder."""
    try:
        import ninja
    except ImportError:
        return
    if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def toolchain_missing() -> str | None:
    """Why the kernels cannot be built here (no compiler, no ninja, no Python headers), or None."""
    from torch.utils.cpp_extension import get_cxx_compiler, is_ninja_available

    _use_ninja_from_pip()
    if shutil.which(get_cxx_compiler()) is None:
        return f"no C++ compiler ({get_cxx_compiler()!r} not found; install g++ or set CXX)"
    if not is_ninja_available():
        return "no ninja build tool (pip install ninja)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (install python3-dev)"
    return None


def _compiler_accepts(flag: str) -> bool:
    from torch.utils.cpp_extension import get_cxx_compiler

    probe = [get_cxx_compiler(), flag, "-x", "c++", "-fsyntax-only", "-"]
    return subprocess.run(probe, input=b"int main() { return 0; }\n", capture_output=True).returncode == 0


def march_flags() -> list[str]:
    """The `-march` the kernels are built for: native by default, see the module docstring."""
    wanted = os.environ.get("LORAFORGE_KERNEL_MARCH", "native")
    if wanted == "portable":
        return []
    if wanted == "native" and not _compiler_accepts("-march=native"):
        log.warning("the C++ compiler does not support -march=native here; building portable CPU kernels")
        return []
    return [f"-march={wanted}"]


def build_tag(march: list[str], sources: list[Path]) -> str:
    """Digest of the target, the CPU's flags where the target is the host's, and every file next to the
    sources (headers included: torch's own check misses them)."""
    digest = hashlib.sha1(" ".join(march).encode())
    if "-march=native" in march:
        digest.update(" ".join(sorted(cpu_flags())).encode())
    for folder in sorted({s.parent for s in sources}):
        for path in sorted(folder.iterdir()):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:8]


def build_root() -> Path:
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


@contextmanager
def _build_lock(build_dir: Path, wait_s: float) -> Iterator[None]:
    """One builder at a time across processes, with a lock the OS releases when its holder dies.

    torch's own lock (a `lock` file in the build folder) stays behind when a build is killed, and every later
    build then waits on it forever. Whoever holds this lock is the only builder, so a `lock` file it finds is
    such a leftover, and is removed."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f"{build_dir.name}.flock", "w") as handle:
        deadline = time.monotonic() + wait_s
        warned = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise KernelBuildError(
                        f"another process has been building the CPU kernels in {build_dir} for over "
                        f"{wait_s:.0f} s; stop it or set LORAFORGE_NO_KERNELS=1"
                    ) from None
                if not warned:
                    log.warning(
                        "waiting for another process that is compiling the CPU kernels (%s)", build_dir
                    )
                    warned = True
                time.sleep(0.5)
        try:
            stale = build_dir / "lock"
            if stale.exists():
                log.warning("removing a stale build lock left by an interrupted compile: %s", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(
    name: str, sources: list[Path], march: list[str], python_module: bool = True, wait_s: float = BUILD_WAIT_S
):
    """Compile (or reuse) and load an extension named `name` + a tag of its inputs; see the module doc."""
    from torch.utils.cpp_extension import load

    _use_ninja_from_pip()
    name = f"{name}_{build_tag(march, sources)}"
    build_dir = build_root() / name
    with _build_lock(build_dir, wait_s):
        if not any(build_dir.glob(f"{name}*.so")):
            log.warning(
                "compiling the engine's CPU kernels for this CPU, once (~2 minutes on 2 cores): %s", build_dir
            )
        try:
            return load(
                name=name,
                sources=[str(s) for s in sources],
                extra_cflags=["-O3", *march, "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                is_python_module=python_module,
                verbose=False,
            )
        except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as exc:
            raise KernelBuildError(f"building the CPU kernels in {build_dir} failed: {exc}") from exc


def kernels_unavailable() -> str | None:
    """Why `cpu_kernels` will return None here (LORAFORGE_NO_KERNELS, or no toolchain), or None where it will
    build them (or has): a check that builds nothing."""
    if os.environ.get("LORAFORGE_NO_KERNELS"):
        return "LORAFORGE_NO_KERNELS is set"
    return toolchain_missing()


@cache
def cpu_kernels():
    """The compiled module, or None where it cannot be built (no toolchain, or LORAFORGE_NO_KERNELS=1).
    Raises KernelBuildError where the build itself fails."""
    if os.environ.get("LORAFORGE_NO_KERNELS"):
        return None
    missing = toolchain_missing()
    if missing is not None:
        log.warning("engine CPU kernels unavailable: %s; using plain PyTorch (slower)", missing)
        return None
    return build("loraforge_cpu_kernels", SOURCES, march_flags())


def main() -> None:
    """Build the kernels now and say for what (make install runs this, so a server's first start is fast)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(describe())
    if cpu_kernels() is not None:
        print(f"CPU kernels: built for {' '.join(march_flags()) or 'the compiler default (portable)'}")
    else:
        print(f"CPU kernels: none ({kernels_unavailable()})")
