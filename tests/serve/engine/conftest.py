"""Fixtures of the engine tests."""

import pytest

from loraforge.serve.engine.cpu_kernels import cpu_kernels, toolchain_missing


@pytest.fixture(scope="session")
def kernels():
    """The compiled CPU kernels. Tests that need them skip only where no C++ toolchain exists; a compile
    error fails them (KernelBuildError)."""
    missing = toolchain_missing()
    if missing is not None:
        pytest.skip(f"{missing}: the engine runs its plain-PyTorch code only")
    return cpu_kernels()
