"""Fixtures of the serving tests: random PEFT adapters for the tiny model, HF/PEFT reference outputs, and the
compiled CPU kernels."""

from pathlib import Path

import pytest

from loraforge.models.tiny_adapters import (  # noqa: F401 - the tests import them from here too
    ALL_LINEAR,
    hf_greedy,
    make_adapter,
    make_adapter_registry,
    write_random_adapter,
)
from loraforge.serve.kernels.loader import cpu_kernels, kernels_unavailable


@pytest.fixture(scope="session")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A registry of four adapters of different ranks and targets for the tiny model."""
    return make_adapter_registry(tiny_model_dir, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="session")
def kernels():
    """The compiled CPU kernels. Tests that need them skip only where no C++ toolchain exists or the run
    turned them off (LORAFORGE_NO_KERNELS); a compile error fails them (KernelBuildError)."""
    why = kernels_unavailable()
    if why is not None:
        pytest.skip(f"{why}: the engine runs its plain-PyTorch code only")
    return cpu_kernels()


AVX2_MARCH = "haswell"  # AVX2 + FMA + F16C, no AVX-512: what an AVX2-only CPU's native build compiles


@pytest.fixture(scope="session")
def avx2_kernels(kernels):
    """The CPU kernels built for AVX2 (no AVX-512), whatever this CPU has: the path of AVX2-only machines
    (e.g. AMD Zen 3), tested here. Skips only where the compiler cannot target x86-64 AVX2."""
    import platform

    from loraforge.serve.kernels import loader

    if platform.machine() not in ("x86_64", "AMD64") or not loader._compiler_accepts(f"-march={AVX2_MARCH}"):
        pytest.skip(f"the compiler cannot build for -march={AVX2_MARCH} on {platform.machine()}")
    return loader.build("loraforge_cpu_kernels", loader.SOURCES, [f"-march={AVX2_MARCH}"])


@pytest.fixture
def force_avx2_kernels(avx2_kernels, monkeypatch):
    """Make the engine built inside the test use the AVX2 build (as LORAFORGE_KERNEL_MARCH=haswell does)."""
    from loraforge.serve.kernels import loader

    monkeypatch.setenv("LORAFORGE_KERNEL_MARCH", AVX2_MARCH)
    loader.cpu_kernels.cache_clear()
    assert loader.cpu_kernels().__name__ == avx2_kernels.__name__
    yield avx2_kernels
    monkeypatch.delenv("LORAFORGE_KERNEL_MARCH")
    loader.cpu_kernels.cache_clear()
