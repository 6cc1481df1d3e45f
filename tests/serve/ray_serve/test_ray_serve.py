"""`serve --ray`: replicas on a local Ray cluster behind one OpenAI-compatible entry point."""

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from loraforge.serve.ray_serve.launch import deploy
from loraforge.serve.ray_serve.options import APP_NAME, REPLICA_HEADER, RayServeOptions
from tests.serve.api.conftest import start_server
from tests.serve.ray_serve.conftest import API_KEY, NUM_ADAPTERS, from_every_replica

pytestmark = pytest.mark.slow
PROMPTS = ["How do I activate my card?", "Why did my transfer fail?", "The quick brown fox"]
REQUESTS = 200
MAX_TOKENS = 8
REQUESTS_SERIES = re.compile(r'loraforge_requests_total\{[^}]*model="([^"]+)"[^}]*\} (\S+)')


def openai_client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def complete(client, model: str, prompt: str) -> tuple[str, str]:
    """(greedy text, replica that answered)."""
    raw = client.completions.with_raw_response.create(
        model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
    )
    return raw.parse().choices[0].text, raw.headers.get(REPLICA_HEADER, "")


def replica_counts() -> dict[str, int]:
    from ray import serve

    deployment = serve.status().applications[APP_NAME].deployments["EngineReplica"]
    return {str(state): count for state, count in deployment.replica_states.items()}


def running_replicas() -> int:
    return sum(n for state, n in replica_counts().items() if state.endswith("RUNNING"))


def wait_until(predicate, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s} s: {replica_counts()}"
        time.sleep(0.5)
    return time.monotonic() - started


def per_replica_requests(url: str, replicas: int) -> dict[str, dict[str, float]]:
    """Each replica's own /metrics: finished requests per model."""

    def ask() -> tuple[str, dict[str, float]]:
        response = httpx.get(url + "/metrics", timeout=30)
        counts: dict[str, float] = {}
        for model, value in REQUESTS_SERIES.findall(response.text):
            counts[model] = counts.get(model, 0.0) + float(value)
        return response.headers[REPLICA_HEADER], counts

    return from_every_replica(ask, replicas)


def test_two_replicas_answer_like_the_plain_server_with_adapter_affinity(spec, port, tiny_model_dir):
    plain = start_server(tiny_model_dir, spec.engine.adapter_dir, api_key=API_KEY, block_size=8)
    try:
        client = openai_client(plain.url)
        base = plain.engine.model_name
        models = [base] + [f"ad{i}" for i in range(NUM_ADAPTERS)]
        expected = {(m, p): complete(client, m, p)[0] for m in models for p in PROMPTS}
    finally:
        plain.stop()
    assert len({expected[(m, PROMPTS[0])] for m in models}) == len(models)  # every adapter changes the output

    options = RayServeOptions(replicas=2, max_adapters_per_replica=NUM_ADAPTERS, replica_cpus=0.5)
    deploy(spec, options, "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    client = openai_client(url)
    # One request per model first, one at a time. Ray learns which replica holds an adapter when its load has
    # finished (the replica reports it every 0.1 s); a request arriving while the first load is still under
    # way goes to the replica holding the fewest adapters instead, and loads it there too.
    warm_up = [(model, PROMPTS[0]) for model in models]
    results = [complete(client, *job) for job in warm_up]
    time.sleep(1)
    jobs = [(models[i % len(models)], PROMPTS[i % len(PROMPTS)]) for i in range(REQUESTS)]
    with ThreadPoolExecutor(8) as pool:
        results += pool.map(lambda job: complete(client, *job), jobs)
    jobs = warm_up + jobs
    served_by: dict[str, set[str]] = {}
    for (model, prompt), (text, replica) in zip(jobs, results, strict=True):
        assert text == expected[(model, prompt)], (model, prompt)
        served_by.setdefault(model, set()).add(replica)
    assert set().union(*served_by.values()) and "" not in set().union(*served_by.values())
    # Affinity, from the replicas' own metrics: each adapter's requests went to the replica(s) holding it.
    metrics = per_replica_requests(url, 2)
    for i in range(NUM_ADAPTERS):
        holders = {replica for replica, counts in metrics.items() if counts.get(f"ad{i}")}
        assert holders == served_by[f"ad{i}"]
        assert len(holders) <= 2
    adapter_placements = sum(len(served_by[f"ad{i}"]) for i in range(NUM_ADAPTERS))
    print(f"\nadapter placements over 2 replicas: {adapter_placements} for {NUM_ADAPTERS} adapters")
    assert adapter_placements <= NUM_ADAPTERS + 2  # without affinity: ~2 per adapter (16)
    assert len(served_by[base]) == 2  # base-model requests go anywhere


def test_scale_to_zero_and_back_under_load(spec, port):
    options = RayServeOptions(
        autoscale=(0, 2),
        max_adapters_per_replica=NUM_ADAPTERS,
        replica_cpus=0.5,
        target_ongoing_requests=1,
        upscale_delay_s=0.5,
        downscale_delay_s=3,
    )
    deploy(spec, options, "127.0.0.1", port)
    wait_until(lambda: running_replicas() == 0, 90, "scaled to zero")
    client = openai_client(f"http://127.0.0.1:{port}")
    started = time.monotonic()
    text, replica = complete(client, "ad1", PROMPTS[0])
    cold_start = time.monotonic() - started
    print(f"\ncold start (0 -> 1 replica, first request answered): {cold_start:.1f} s")
    assert text and replica
    # Load: 8 concurrent requests against a target of 1 per replica brings the second replica.
    stop = time.monotonic() + 120
    with ThreadPoolExecutor(8) as pool:
        while running_replicas() < 2:
            assert time.monotonic() < stop, f"no second replica under load: {replica_counts()}"
            list(pool.map(lambda i: complete(client, f"ad{i % NUM_ADAPTERS}", PROMPTS[0]), range(16)))
    wait_until(lambda: running_replicas() == 0, 90, "scaled back to zero when idle")
