"""Shared by the export tests: llama.cpp cached where a user's would be, and a tiny model with a run."""

from pathlib import Path

import pytest

from loraforge.models.tiny import build_tiny_llama
from tests.serve.conftest import make_adapter


@pytest.fixture(scope="module", autouse=True)
def shared_llama_cpp(monkeypatch_module):
    """llama.cpp is cached where a user's would be, not in the tests' throwaway LORAFORGE_HOME."""
    monkeypatch_module.setenv(
        "LORAFORGE_LLAMA_CPP_DIR", str(Path.home() / ".cache" / "loraforge" / "llama.cpp")
    )


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny random Llama with SmolLM2's real tokenizer (llama.cpp's converter knows real tokenizers only),
    and a run directory holding an adapter for it."""
    from loraforge.models import load_tokenizer, resolve_model

    root = tmp_path_factory.mktemp("gguf")
    base = build_tiny_llama(root / "base", tokenizer=load_tokenizer(resolve_model("smollm2-135m")))
    make_adapter(base, root / "run" / "adapter", r=8, seed=7)
    return root / "run", base
