"""Hub adapters (opt-in): size cap, timeout, bounded concurrency, failures remembered, never blocking local
loads. The hub is faked: no test touches the network."""

import threading
import time

import pytest

from loraforge.errors import ModelNotFoundError
from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
from loraforge.serve.limits import ServeLimits
from loraforge.serve.lora.hub import HubBusyError, HubFetcher
from tests.serve.conftest import write_random_adapter

GREEDY = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)


class FakeHub:
    """Stands in for the Hugging Face Hub: file sizes and downloads of a few repositories."""

    def __init__(self, repos: dict, sizes: dict | None = None):
        self.repos, self.size_of = repos, sizes or {}
        self.size_calls: list[str] = []
        self.downloads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def sizes(self, repo, timeout):
        self.size_calls.append(repo)
        if repo not in self.repos:
            raise OSError("Repository Not Found (offline)")
        return {"adapter_config.json": 100, "adapter_model.safetensors": self.size_of.get(repo, 1000)}

    def download(self, repo, timeout):
        self.downloads.append(repo)
        self.gate.wait(30)
        return self.repos[repo]


@pytest.fixture(scope="module")
def hub_folders(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return {
        "org/good": write_random_adapter(tiny_model_dir, root / "good", r=4, seed=11),
        "org/other": write_random_adapter(tiny_model_dir, root / "other", r=4, seed=12),
        "local": write_random_adapter(tiny_model_dir, root / "registry" / "local", r=4, seed=13).parent,
    }


def _engine(tiny_model_dir, hub_folders, fake: FakeHub, **limits) -> Engine:
    lim = ServeLimits(allow_hub_adapters=True, **limits)
    engine = Engine(
        EngineConfig(
            model=str(tiny_model_dir), precision="fp32", adapter_dir=hub_folders["local"], limits=lim
        )
    )
    engine.adapters.sources.hub = HubFetcher(lim, fake.sizes, fake.download)
    return engine


def test_an_allowed_hub_adapter_is_downloaded_once_and_served(tiny_model_dir, hub_folders):
    fake = FakeHub({"org/good": hub_folders["org/good"]})
    engine = _engine(tiny_model_dir, hub_folders, fake)
    first = engine.generate([[5, 6, 7]], GREEDY, ["org/good"])[0]
    again = engine.generate([[5, 6, 7]], GREEDY, ["org/good"])[0]
    assert first.error is None and first.output_ids == again.output_ids
    assert fake.downloads == ["org/good"] and "org/good" in engine.adapters.resident


def test_a_failed_download_is_remembered_not_retried_per_request(tiny_model_dir, hub_folders):
    fake = FakeHub({})
    engine = _engine(tiny_model_dir, hub_folders, fake, adapter_failure_ttl_s=60)
    seq = engine.generate([[5, 6]], GREEDY, ["org/missing"])[0]
    assert isinstance(seq.error, ModelNotFoundError) and "Hugging Face Hub" in str(seq.error)
    for _ in range(5):  # later requests get the remembered error at once
        with pytest.raises(ModelNotFoundError, match="Hugging Face Hub"):
            engine.add_request([5, 6], GREEDY, "org/missing")
    assert fake.size_calls == ["org/missing"]


def test_a_failure_is_tried_again_after_its_ttl(tiny_model_dir, hub_folders):
    fake = FakeHub({})
    engine = _engine(tiny_model_dir, hub_folders, fake, adapter_failure_ttl_s=0.2)
    engine.generate([[5, 6]], GREEDY, ["org/late"])
    fake.repos["org/late"] = hub_folders["org/good"]  # published meanwhile
    time.sleep(0.3)
    seq = engine.generate([[5, 6]], GREEDY, ["org/late"])[0]
    assert seq.error is None and fake.size_calls == ["org/late", "org/late"]


def test_an_adapter_over_the_size_cap_is_not_downloaded(tiny_model_dir, hub_folders):
    fake = FakeHub({"org/huge": hub_folders["org/good"]}, sizes={"org/huge": 5 << 30})
    engine = _engine(tiny_model_dir, hub_folders, fake, hub_max_bytes=1 << 20)
    seq = engine.generate([[5, 6]], GREEDY, ["org/huge"])[0]
    assert isinstance(seq.error, ModelNotFoundError) and "limit" in str(seq.error)
    assert fake.downloads == []


def test_a_stalled_download_times_out(tiny_model_dir, hub_folders):
    fake = FakeHub({"org/slow": hub_folders["org/good"]})
    fake.gate.clear()
    engine = _engine(tiny_model_dir, hub_folders, fake, hub_timeout_s=0.3)
    try:
        started = time.monotonic()
        seq = engine.generate([[5, 6]], GREEDY, ["org/slow"])[0]
        assert isinstance(seq.error, ModelNotFoundError) and "within" in str(seq.error)
        assert time.monotonic() - started < 10
    finally:
        fake.gate.set()


def test_downloads_are_bounded_and_never_block_local_adapters(tiny_model_dir, hub_folders):
    fake = FakeHub({"org/good": hub_folders["org/good"], "org/other": hub_folders["org/other"]})
    fake.gate.clear()
    engine = _engine(tiny_model_dir, hub_folders, fake, hub_max_downloads=1, hub_timeout_s=0.5)
    try:
        stuck = engine.add_request([5, 6], GREEDY, "org/good")
        # A local adapter loads and runs while the download hangs.
        local = engine.add_request([5, 6], GREEDY, "local")
        while not (stuck.is_finished and local.is_finished):
            engine.adapters.wait_for_load(0.01)
            engine.step()
        assert local.error is None and "within" in str(stuck.error)
        # The stalled download still holds the one download slot: another repository is refused (429)
        # instead of starting one more download thread.
        busy = engine.generate([[5, 6]], GREEDY, ["org/other"])[0]
        assert isinstance(busy.error, HubBusyError)
    finally:
        fake.gate.set()
    time.sleep(1.1)  # a "busy" answer is remembered for a second only
    ok = engine.generate([[5, 6]], GREEDY, ["org/other"])[0]
    assert ok.error is None and ok.finish_reason.value == "length"
