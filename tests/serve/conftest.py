"""Fixtures of the serving tests: random PEFT adapters for the tiny model, HF/PEFT reference outputs, and the
compiled CPU kernels."""

import os
from pathlib import Path

import pytest

from loraforge.models.tiny_adapters import (  # noqa: F401 - the tests import them from here too
    ALL_LINEAR,
    hf_greedy,
    make_adapter,
    make_adapter_registry,
    write_random_adapter,
)
from loraforge.serve.kernels.loader import cpu_kernels, toolchain_missing


@pytest.fixture(scope="session")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A registry of four adapters of different ranks and targets for the tiny model."""
    return make_adapter_registry(tiny_model_dir, tmp_path_factory.mktemp("adapters"))


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
