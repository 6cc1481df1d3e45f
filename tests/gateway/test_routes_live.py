"""Routes through a live gateway (uvicorn on loopback) between two scripted upstreams: the general model and
the specialist hosting adapters. Every stage, fallback, the served-by header and what is recorded."""

import threading
import time

import pytest
from openai import OpenAI

from loraforge.curation.datasets import DatasetFilter, build_dataset, dataset_rows, get_dataset
from loraforge.gateway.upstream import UpstreamClient
from loraforge.store import Store
from loraforge.store.output_spec import OutputSpec
from loraforge.store.routes import rollback_route, set_route
from tests.gateway.conftest import start_gateway
from tests.gateway.servers import free_port

LABELS = OutputSpec("classification", ("card_arrival", "lost_card"))
ASK = [{"role": "user", "content": "where is my card?"}]


@pytest.fixture
def routed(tmp_path, upstream, specialist):
    """A gateway whose specialist is the scripted adapter server; routes are re-read every 0.1 s."""
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    settings, app, server = start_gateway(
        tmp_path, store_url, upstream.url, specialist_url=specialist.url, route_refresh_s=0.1
    )
    store = Store(store_url)
    with server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="sk-x", max_retries=0, timeout=20)
        yield client, store, app
    store.close()


def route(store, app, task="intent", stage="full", adapter="ad1", **kwargs):
    """Set a route in the store and wait until the running gateway has picked it up (no restart)."""
    change = set_route(store, task, stage, adapter, **kwargs)
    wait_for_seq(app, task, change.seq)


def wait_for_seq(app, task, seq):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        current = app.state.routes.routes.get(task)
        if current is not None and current.seq == seq:
            return
        time.sleep(0.02)
    raise AssertionError(f"the gateway did not pick up route #{seq} of {task}")


def ask(client, task="intent", stream=False, user=None, messages=ASK):
    extra = {"user": user} if user else {}
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-x",
        messages=messages,
        stream=stream,
        extra_headers={"X-Loraforge-Task": task},
        **extra,
    )
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        text = raw.parse().choices[0].message.content
    return raw.headers["x-loraforge-served-by"], raw.headers["x-loraforge-call-id"], text


def test_unrouted_tasks_are_served_by_the_general_model(routed, specialist):
    client, store, _ = routed
    served_by, call_id, text = ask(client, task="unrouted")
    assert (served_by, text) == ("general", "echo: where is my card?")
    assert store.get_call(call_id).served_by == "general"
    assert specialist.requests == []


def test_full_route_sends_every_call_to_the_adapter_and_records_it(routed, upstream, specialist):
    client, store, app = routed
    route(store, app, output=LABELS)
    for stream in (False, True):
        served_by, call_id, text = ask(client, stream=stream)
        assert (served_by, text) == ("adapter:ad1", "card_arrival")
        call = store.get_call(call_id)
        assert (call.served_by, call.route_stage, call.requested_model) == ("adapter:ad1", "full", "gpt-x")
        assert call.served_model == "ad1-2026-01-01" and call.completion_tokens == 1
        assert call.cost_usd is None  # priced by the hardware in `report cost`, never by a token table
    assert [r["model"] for r in specialist.requests] == ["ad1", "ad1"]
    assert upstream.requests == []


def test_full_route_with_the_specialist_down_falls_back_for_every_call_and_loses_none(routed, upstream):
    client, store, app = routed
    dead = f"http://127.0.0.1:{free_port()}/v1"
    app.state.router.specialist = UpstreamClient(dead, 5.0, 1.0)  # as if the adapter server were gone
    route(store, app)
    results = [ask(client, stream=i % 2 == 1, user=f"u{i}") for i in range(10)]
    assert {r[0] for r in results} == {"fallback"}
    assert all(r[2] == "echo: where is my card?" for r in results)
    calls = [store.get_call(r[1]) for r in results]
    assert all(c.status == "ok" and c.served_by == "fallback" for c in calls)
    assert all(c.fallback_reason.startswith("error: ") for c in calls)
    assert len(upstream.requests) == 10 and store.count_calls() == 10


def test_invalid_adapter_answers_fall_back_unless_the_route_says_otherwise(routed, specialist):
    client, store, app = routed
    specialist.reply = "refund please"  # not a label of the task
    route(store, app, output=LABELS)
    for stream in (False, True):
        served_by, call_id, text = ask(client, stream=stream)
        assert (served_by, text) == ("fallback", "echo: where is my card?")
        assert "not in the task's label set" in store.get_call(call_id).fallback_reason
    route(store, app, output=LABELS, fallback=("on-error",))
    served_by, call_id, text = ask(client)
    assert (served_by, text) == ("adapter:ad1", "refund please")


def test_adapter_timeout_falls_back(routed, specialist):
    client, store, app = routed
    specialist.delay_s = 2.0
    route(store, app, timeout_ms=200)
    started = time.monotonic()
    served_by, call_id, _ = ask(client)
    assert served_by == "fallback" and time.monotonic() - started < 1.5
    call = store.get_call(call_id)
    assert call.fallback_reason.startswith("timeout: ")
    assert call.latency_ms >= 200  # what the client waited: the adapter's try included


def test_adapter_error_without_fallback_reaches_the_client_as_its_error(routed, specialist):
    client, store, app = routed
    specialist.fail_status = 503
    route(store, app, fallback=())
    with pytest.raises(Exception) as info:
        ask(client)
    assert getattr(info.value, "status_code", None) == 503
    (call,) = store.calls(task="intent")
    assert (call.status, call.served_by) == ("error", "adapter:ad1")


def test_shadow_adds_no_latency_and_logs_linked_pairs(routed, upstream, specialist, tmp_path):
    client, store, app = routed
    specialist.delay_s = 1.0
    route(store, app, stage="shadow")
    started = time.monotonic()
    answers = [ask(client, user=f"u{i}") for i in range(3)]
    assert time.monotonic() - started < 1.0  # three calls answered before one shadow answer could be
    assert {a[0] for a in answers} == {"general"}
    deadline = time.monotonic() + 10
    while len(store.calls(task="intent")) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    calls = store.calls(task="intent")
    shadows = {c.shadow_of: c for c in calls if c.shadow_of}
    assert set(shadows) == {a[1] for a in answers}
    for shadow in shadows.values():
        assert (shadow.served_by, shadow.route_stage, shadow.status) == ("adapter:ad1", "shadow", "ok")
        assert shadow.response_body["choices"][0]["message"]["content"] == "card_arrival"
    primaries = [c for c in calls if not c.shadow_of]
    assert all(c.route_stage == "shadow" and c.served_by == "general" for c in primaries)
    built = build_dataset(store, "intent-ds", DatasetFilter("intent"), root=tmp_path)
    rows = dataset_rows(store, get_dataset(store, built.name, built.version).id)
    assert sorted(r.call_id for r in rows) == sorted(c.id for c in primaries)  # no shadow examples


def test_shadow_is_dropped_not_queued_when_saturated(routed, specialist):
    client, store, app = routed
    specialist.delay_s = 1.0
    app.state.router.shadow_concurrency = 2
    route(store, app, stage="shadow")
    threads = [threading.Thread(target=ask, args=(client,), kwargs={"user": f"u{i}"}) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(1.5)
    assert len(specialist.requests) <= 2 + 1  # the limit, plus one that may have finished meanwhile
    assert len([c for c in store.calls(task="intent") if c.shadow_of]) == len(specialist.requests)


def test_canary_splits_sticks_per_user_and_rollback_restores_the_previous_route(routed):
    client, store, app = routed
    route(store, app, stage="canary", percent=50)
    first = {u: ask(client, user=f"user-{u}")[0] for u in range(60)}
    assert set(first.values()) == {"general", "adapter:ad1"}
    assert 15 <= sum(v == "general" for v in first.values()) <= 45
    again = {
        u: ask(client, user=f"user-{u}", messages=[{"role": "user", "content": "other"}])[0]
        for u in range(20)
    }
    assert all(again[u] == first[u] for u in again)
    route(store, app, stage="full")
    assert ask(client, user="user-0")[0] == "adapter:ad1"
    change = rollback_route(store, "intent")
    wait_for_seq(app, "intent", change.seq)
    assert {ask(client, user=f"user-{u}")[0] for u in range(20)} == {first[u] for u in range(20)}
    assert all(ask(client, user=f"user-{u}")[0] == first[u] for u in range(20))
