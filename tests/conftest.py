"""Shared fixtures: an isolated LORAFORGE_HOME and a tiny random Llama built once per test session."""

from pathlib import Path

import pytest

from loraforge.models.tiny import build_tiny_llama

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def loraforge_home(tmp_path_factory) -> Path:
    """Keep caches and stores of the test run out of the user's home."""
    home = tmp_path_factory.mktemp("loraforge-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("LORAFORGE_HOME", str(home))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield home
    mp.undo()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama (GQA, tied embeddings) with a byte-level BPE tokenizer and ChatML template."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
