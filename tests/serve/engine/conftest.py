"""Fixtures of the engine tests."""

import pytest

from loraforge.serve.engine.cpu_kernels import cpu_kernels


@pytest.fixture(scope="session")
def kernels():
    """The compiled CPU kernels; tests that need them skip where no C++ toolchain can build them."""
    module = cpu_kernels()
    if module is None:
        pytest.skip("no C++ toolchain: the engine runs its plain-PyTorch code only")
    return module
