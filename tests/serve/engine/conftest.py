"""Fixtures of the engine tests."""

import os

import pytest

from loraforge.serve.engine.cpu_kernels import cpu_kernels, toolchain_missing


@pytest.fixture(scope="session")
def kernels():
    """The compiled CPU kernels. Tests that need them skip only where no C++ toolchain exists or the run
    turned them off (LORAFORGE_NO_KERNELS); a compile error fails them (KernelBuildError)."""
    if os.environ.get("LORAFORGE_NO_KERNELS"):
        pytest.skip("LORAFORGE_NO_KERNELS is set: the engine runs its plain-PyTorch code only")
    missing = toolchain_missing()
    if missing is not None:
        pytest.skip(f"{missing}: the engine runs its plain-PyTorch code only")
    return cpu_kernels()
