"""Prometheus labels: clients cannot grow the number of series without bound."""

from types import SimpleNamespace

import httpx

from loraforge.serve.api.metrics import OTHER_MODELS, Metrics
from loraforge.serve.engine.block_manager import BlockManager


def engine_stub():
    """What Metrics reads of the AsyncEngine facade."""
    return SimpleNamespace(
        num_waiting=lambda: 0,
        num_running=lambda: 0,
        num_resident_adapters=lambda: 0,
        num_preemptions=lambda: 0,
        blocks=BlockManager(8, 4),
    )


def test_client_chosen_names_share_one_label_past_the_bound():
    metrics = Metrics(engine_stub(), max_models=3)
    assert [metrics.label(f"org/a{i}", local=False) for i in range(5)] == [
        "org/a0",
        "org/a1",
        "org/a2",
        OTHER_MODELS,
        OTHER_MODELS,
    ]
    assert metrics.label("org/a1", local=False) == "org/a1"  # a name that has a label keeps it
    assert metrics.label("registry-adapter", local=True) == "registry-adapter"  # the operator's: always
    for i in range(100):
        metrics.observe(metrics.label(f"org/b{i}", False), "chat", "ok", 1, 1, 0.0, None, 1.0)
    text = metrics.render().decode()
    series = [line for line in text.splitlines() if line.startswith("loraforge_requests_total{")]
    assert series == [f'loraforge_requests_total{{endpoint="chat",model="{OTHER_MODELS}",status="ok"}} 100.0']


def test_unknown_models_make_no_series(live):
    for i in range(5):
        body = {"model": f"nope-{i}", "prompt": "x", "max_tokens": 1}
        httpx.post(live.url + "/v1/completions", json=body, headers={"Authorization": "Bearer test-key"})
    assert "nope-" not in httpx.get(live.url + "/metrics").text


def test_prefix_cache_hits_are_exported_in_tokens_and_blocks():
    engine = engine_stub()
    st = engine.blocks.stats
    st.queried_tokens, st.hit_tokens, st.queried_blocks, st.hit_blocks = 200, 150, 12, 9
    text = Metrics(engine).render().decode()
    assert 'loraforge_prefix_cache_queries_total{unit="tokens"} 200.0' in text
    assert 'loraforge_prefix_cache_hits_total{unit="blocks"} 9.0' in text
    assert 'loraforge_prefix_cache_hit_rate{unit="tokens"} 0.75' in text
    assert "loraforge_prefix_cache_blocks 0.0" in text
