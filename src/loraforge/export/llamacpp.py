"""llama.cpp's converters and tools, from the source distribution of `llama-cpp-python` on the package index
(it vendors llama.cpp under `vendor/llama.cpp`): fetched once, built once with cmake, cached under
`$LORAFORGE_HOME/llama.cpp/VERSION/` (or `$LORAFORGE_LLAMA_CPP_DIR/VERSION/`). The converters are
llama.cpp's own, so a GGUF we write is what llama.cpp itself would write; the tools (`llama-quantize` for
k-quants, `llama-simple` to check that a file loads and generates, `llama-server` and `llama-bench` for
benchmarks/vs_llamacpp.py) are built only when asked for, and kept.
"""

import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from loraforge.errors import LoraforgeError
from loraforge.paths import loraforge_home

LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python release whose vendored llama.cpp we use
# Built for this CPU (ggml's default -march=native) but without AMX: on an Intel Xeon with AMX, ggml's AMX
# path for quantized weights crashed llama-simple (SIGSEGV) on a q4_k_m file of the tests' small model as
# soon as a batch had more than one token (tests/export/test_gguf.py). GCC lets explicit -mno-* flags win
# over -march=native whatever their order (checked with `gcc -dM -E`).
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
BUILD_DIR = "build-noamx"  # a new name, so that a tree built before with AMX is built again
BUILD_TIMEOUT_S = 3600


class LlamaCppError(LoraforgeError):
    """llama.cpp's source could not be fetched, a tool could not be built, or a conversion failed."""


def source_dir() -> Path:
    """The vendored llama.cpp tree, fetched and unpacked on first use."""
    root = (
        Path(os.environ.get("LORAFORGE_LLAMA_CPP_DIR") or loraforge_home() / "llama.cpp") / LLAMA_CPP_PYTHON
    )
    tree = root / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").is_file():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        fetch = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        fetch += [f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "--dest", tmp]
        done = subprocess.run(fetch, capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise LlamaCppError(
                f"cannot fetch llama.cpp (llama-cpp-python {LLAMA_CPP_PYTHON}): {done.stderr[-500:]}"
            )
        prefix = f"{archives[0].name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        unpacked = Path(tmp) / "llama.cpp"
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                if member.name.startswith(prefix) and (member.isfile() or member.isdir()):
                    member.name = member.name.removeprefix(prefix)
                    if member.name:
                        archive.extract(member, unpacked, filter="data")
        os.replace(unpacked, tree)  # atomic: a concurrent or killed fetch never leaves half a tree
    return tree


def tool(name: str) -> Path:
    """A llama.cpp program (`llama-quantize`, `llama-simple`, `llama-server`, ...), built with cmake once."""
    return tools(name)[0]


def tools(*names: str) -> list[Path]:
    """Several llama.cpp programs; the missing ones are built together in one cmake run (they share most
    of their objects), the ones already built are reused."""
    tree = source_dir()
    build_dir = tree / BUILD_DIR
    binaries = [build_dir / "bin" / name for name in names]
    missing = [b.name for b in binaries if not b.is_file()]
    if not missing:
        return binaries
    if shutil.which("cmake") is None:
        raise LlamaCppError(f"building {', '.join(missing)} needs cmake (apt-get install cmake)")
    configure = ["cmake", "-S", str(tree), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release"]
    configure += ["-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        configure += [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
    build = ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2), "--target", *missing]
    for step in (configure, build):
        _run(step, f"building llama.cpp's {', '.join(missing)}", timeout=BUILD_TIMEOUT_S)
    return binaries


def run_tool(name: str, *args: str | Path) -> None:
    """Run a llama.cpp program (built on first use, see `tool`)."""
    _run([tool(name), *args], f"llama.cpp's {name}")


def run_script(script: str, *args: str | Path) -> None:
    """Run one of llama.cpp's Python converters with this interpreter (its own gguf-py comes first)."""
    tree = source_dir()
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tree / "gguf-py"), str(tree)])}
    _run([sys.executable, tree / script, *args], f"llama.cpp's {script}", env=env)


def _run(command: list, what: str, env: dict | None = None, timeout: float | None = None) -> None:
    """Run `command`; a failure raises LlamaCppError with the end of its output."""
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise LlamaCppError(f"{what} failed: {(done.stderr or done.stdout)[-800:]}")
