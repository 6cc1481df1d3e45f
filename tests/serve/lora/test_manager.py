"""Adapter manager: sources, safety (no pickles, no escapes), background loads, LRU by count and bytes."""

import json

import pytest
import torch

from loraforge.errors import LoraforgeError, ModelNotFoundError
from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
from tests.serve.conftest import write_random_adapter


@pytest.fixture(scope="module")
def registry(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lru-registry")
    for i in range(5):
        write_random_adapter(tiny_model_dir, root / f"r{i}", r=4, seed=i)
    return root


def _engine(model_dir, registry, **kw):
    return Engine(EngineConfig(model=str(model_dir), precision="fp32", adapter_dir=registry, **kw))


def _use(engine, name):
    engine.generate([[5, 6, 7]], SamplingParams(max_tokens=1, temperature=0), [name])


def test_lru_bounded_by_count_evicts_least_recently_used(tiny_model_dir, registry):
    engine = _engine(tiny_model_dir, registry, max_adapters=3)
    for name in ["r0", "r1", "r2"]:
        _use(engine, name)
    _use(engine, "r0")  # r1 is now the least recently used
    _use(engine, "r3")
    assert list(engine.adapters.resident) == ["r2", "r0", "r3"]


def test_lru_bounded_by_bytes(tiny_model_dir, registry):
    engine = _engine(tiny_model_dir, registry)
    _use(engine, "r0")
    one = engine.adapters.resident_bytes
    engine2 = _engine(tiny_model_dir, registry, max_adapter_bytes=2 * one)
    for name in ["r0", "r1", "r2", "r3"]:
        _use(engine2, name)
    assert list(engine2.adapters.resident) == ["r2", "r3"]


def test_pinned_adapters_are_not_evicted(tiny_model_dir, registry):
    engine = _engine(tiny_model_dir, registry, max_adapters=2)
    _use(engine, "r0")
    engine.adapters.pin("r0")
    for name in ["r1", "r2", "r3"]:
        _use(engine, name)
    assert "r0" in engine.adapters.resident and len(engine.adapters.resident) == 2


def test_adapter_in_use_is_not_evicted_and_others_wait(tiny_model_dir, registry):
    engine = _engine(tiny_model_dir, registry, max_adapters=1)
    long = engine.add_request([5, 6, 7], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True), "r0")
    while not engine.adapters.resident:
        engine.adapters.wait_for_load()
        engine.step()
    other = engine.add_request([5, 6, 7], SamplingParams(max_tokens=2, temperature=0), "r1")
    while engine.has_work():
        engine.adapters.wait_for_load(0.01)
        engine.step()
        if not long.is_finished:
            assert "r1" not in engine.adapters.resident  # r0 still serves a request: no slot for r1 yet
    assert long.finish_reason.value == "length" and other.is_finished and other.error is None
    assert list(engine.adapters.resident) == ["r1"]


def test_base_requests_are_not_blocked_by_an_adapter_load(tiny_model_dir, registry, monkeypatch):
    import threading

    engine = _engine(tiny_model_dir, registry)
    gate = threading.Event()
    real = engine.adapters._load
    monkeypatch.setattr(engine.adapters, "_load", lambda name: (gate.wait(10), real(name))[1])
    slow = engine.add_request([5, 6, 7], SamplingParams(max_tokens=2, temperature=0), "r2")
    base = engine.add_request([5, 6, 7], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    while not base.is_finished:
        engine.step()
    assert not slow.is_finished and slow in engine.pending
    gate.set()
    while engine.has_work():
        engine.adapters.wait_for_load(0.01)
        engine.step()
    assert slow.is_finished and slow.error is None


def test_pickled_weights_are_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    torch.save({"x": torch.zeros(1)}, folder / "adapter_model.bin")
    engine = _engine(tiny_model_dir, tmp_path)
    seq = engine.generate([[5, 6]], SamplingParams(max_tokens=1), ["pickled"])[0]
    assert isinstance(seq.error, LoraforgeError) and "pickle" in str(seq.error)


def test_adapter_for_another_base_model_is_refused(tiny_model_dir, tmp_path):
    import shutil

    from tests.serve.conftest import write_random_adapter as write

    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (other / "config.json").write_text(json.dumps(cfg))
    write(other, tmp_path / "reg" / "wrong", r=2)
    engine = _engine(tiny_model_dir, tmp_path / "reg")
    seq = engine.generate([[5, 6]], SamplingParams(max_tokens=1), ["wrong"])[0]
    assert "another base model" in str(seq.error)


@pytest.mark.parametrize("name", ["../r0", "..", ".", "r0/../../x", "/etc", "a\\b", "", "r0/"])
def test_names_escaping_the_registry_are_rejected(tiny_model_dir, registry, name):
    engine = _engine(tiny_model_dir, registry)
    with pytest.raises(ModelNotFoundError):
        engine.adapters.locate(name)


def test_hub_adapters_are_off_by_default(tiny_model_dir, registry):
    engine = _engine(tiny_model_dir, registry)
    with pytest.raises(ModelNotFoundError, match="--allow-hub-adapters"):
        engine.adapters.locate("org/adapter")
    with pytest.raises(ModelNotFoundError, match="Hugging Face Hub"):
        engine.add_request([5, 6], SamplingParams(max_tokens=1), "org/adapter")
    assert not engine.adapters.loading  # nothing was fetched


def test_resident_memory_counts_every_slot_at_the_padded_rank(tiny_model_dir, registry, tmp_path):
    wide = write_random_adapter(tiny_model_dir, tmp_path / "reg" / "wide", r=16, seed=7)
    for i in range(2):
        write_random_adapter(tiny_model_dir, wide.parent / f"n{i}", r=4, seed=i)
    probe = _engine(tiny_model_dir, wide.parent)
    small, big = probe.lora.adapter_bytes_at(4), probe.lora.adapter_bytes_at(16)
    assert big == 4 * small
    engine = _engine(tiny_model_dir, wide.parent, max_adapter_bytes=2 * small)
    _use(engine, "n0")
    _use(engine, "n1")
    assert list(engine.adapters.resident) == ["n0", "n1"] and engine.adapters.resident_bytes == 2 * small
    _use(engine, "wide")  # every slot now pads to rank 16: only one adapter fits the bound
    assert list(engine.adapters.resident) == ["wide"] and engine.adapters.resident_bytes == big
    _use(engine, "n0")  # still padded to 16
    assert list(engine.adapters.resident) == ["n0"] and engine.adapters.resident_bytes == big


def test_an_adapter_over_the_rank_limit_is_refused(tiny_model_dir, registry):
    from loraforge.serve.limits import ServeLimits

    engine = _engine(tiny_model_dir, registry, limits=ServeLimits(max_adapter_rank=2))
    seq = engine.generate([[5, 6]], SamplingParams(max_tokens=1), ["r0"])[0]
    assert isinstance(seq.error, LoraforgeError) and "--max-adapter-rank" in str(seq.error)
    assert engine.lora.rank == 0  # nothing was installed


def test_remembered_failures_are_bounded(tiny_model_dir, tmp_path):
    from loraforge.serve.limits import ServeLimits

    for i in range(5):
        folder = tmp_path / f"broken{i}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")  # no weights
    engine = _engine(tiny_model_dir, tmp_path, limits=ServeLimits(max_remembered_failures=3))
    seqs = engine.generate([[5, 6]] * 5, SamplingParams(max_tokens=1), [f"broken{i}" for i in range(5)])
    assert all(s.error is not None for s in seqs)
    assert list(engine.adapters.failed) == ["broken2", "broken3", "broken4"]


def test_loaded_but_not_installed_adapters_are_bounded(tiny_model_dir, registry):
    engine = _engine(tiny_model_dir, registry, max_adapters=1)
    long = engine.add_request([5, 6, 7], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True), "r0")
    others = [
        engine.add_request([5, 6, 7], SamplingParams(max_tokens=1, temperature=0), f"r{i}") for i in (1, 2, 3)
    ]
    manager = engine.adapters
    while engine.has_work():
        # r0 holds the only slot while it runs: at most one other adapter waits loaded in memory.
        assert len(manager.loading) + len(manager.ready) <= 1
        manager.wait_for_load(0.01)
        engine.step()
    assert long.error is None and all(s.error is None and s.is_finished for s in others)


def test_a_failure_installed_by_someone_else_still_fails_the_waiting_requests(tiny_model_dir, tmp_path):
    """Issue 17: POST /v1/adapters installs finished loads itself; a failure it sees must still reach the
    requests waiting for that adapter (they used to wait forever)."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")  # no weights: the load fails
    engine = _engine(tiny_model_dir, tmp_path)
    seq = engine.add_request([5, 6], SamplingParams(max_tokens=1), "broken")
    engine.adapters.wait_for_load(10)
    engine.adapters.install_finished()  # what the /v1/adapters route does, before the engine's own step
    for _ in range(3):
        engine.step()
    assert seq.is_finished and "pickles are refused" in str(seq.error)


def test_the_manager_owns_the_life_cycle_of_an_adapter(tiny_model_dir, registry):
    from loraforge.serve.lora.manager import AdapterState, Resident

    engine = _engine(tiny_model_dir, registry)
    manager = engine.adapters
    assert manager.state("r0") is AdapterState.KNOWN
    seq = engine.add_request([5, 6, 7], SamplingParams(max_tokens=1, temperature=0), "r0")
    assert manager.state("r0") in (AdapterState.LOADING, AdapterState.READY) and seq in manager.pending
    while engine.has_work():
        manager.wait_for_load(0.01)
        engine.step()
    assert seq.is_finished and seq.error is None and not manager.pending
    assert manager.state("r0") is AdapterState.RESIDENT
    resident = manager.resident["r0"]
    assert isinstance(resident, Resident) and resident.index == seq.adapter_index >= 1
    assert manager.unload("r0") and manager.state("r0") is AdapterState.KNOWN
