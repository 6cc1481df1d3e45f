"""The fewshot stage through a live gateway between the scripted general upstream and specialist: the
examples reach the model's prompt (never the stored request), who answered is recorded, errors fall back to
the plain general model, a task without good examples is answered plainly, and new corrections are
picked up in the background."""

import time

import pytest
from openai import OpenAI

from loraforge.store import Store
from loraforge.store.output_spec import OutputSpec
from loraforge.store.routes import set_route
from tests.gateway.conftest import start_gateway
from tests.gateway.test_routes_live import ASK, ask, wait_for_seq
from tests.store.calls import chat_call, completion_call

SYSTEM = {"role": "system", "content": "Answer with the intent."}
GOOD = [  # (input, logged answer, correction)
    ("my card has still not arrived", "lost_card", "card_arrival"),
    ("how long until my card arrives", "card_arrival", "card_arrival"),
    ("what is the exchange rate today", "?", "exchange_rate"),
]


@pytest.fixture
def gateway(tmp_path, upstream, specialist):
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    settings, app, server = start_gateway(
        tmp_path,
        store_url,
        upstream.url,
        specialist_url=specialist.url,
        route_refresh_s=0.1,
        fewshot_refresh_s=0.1,
    )
    store = Store(store_url)
    with server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="sk-x", max_retries=0, timeout=20)
        yield client, store, app
    store.close()


def add_corrected(store, task, rows, system=True):
    records = [
        chat_call(task, text, answer, system=SYSTEM["content"] if system else None, seq=i)
        for i, (text, answer, _) in enumerate(rows)
    ]
    store.insert_calls(records)
    for record, (_, _, fixed) in zip(records, rows, strict=True):
        store.add_feedback(record["id"], corrected_output=fixed)


def fewshot_route(store, app, task="intent", examples=None, **kwargs):
    change = set_route(store, task, "fewshot", **kwargs)
    wait_for_seq(app, task, change.seq)
    deadline = time.monotonic() + 5
    key = (task, kwargs.get("min_score"))
    while time.monotonic() < deadline:
        index = app.state.fewshot.indexes.get(key)
        if index is not None and (examples is None or len(index) == examples):
            return
        time.sleep(0.02)
    raise AssertionError(f"the gateway did not index {examples} examples of {task}")


def test_general_model_gets_the_most_similar_corrected_examples_as_prior_turns(gateway, upstream, specialist):
    client, store, app = gateway
    add_corrected(store, "intent", GOOD)
    fewshot_route(store, app, k=2, examples=3)
    question = [SYSTEM, *ASK]
    for stream in (False, True):
        served_by, call_id, text = ask(client, stream=stream, messages=question)
        assert (served_by, text) == ("fewshot", "echo: where is my card?")
        sent = upstream.requests[-1]
        assert sent["model"] == "gpt-x"  # model general: the client's model, on the general upstream
        assert sent["messages"] == [
            SYSTEM,
            {"role": "user", "content": "how long until my card arrives"},
            {"role": "assistant", "content": "card_arrival"},
            {"role": "user", "content": "my card has still not arrived"},
            {"role": "assistant", "content": "card_arrival"},  # the correction, not the logged answer
            *ASK,
        ]
        call = store.get_call(call_id)
        assert (call.served_by, call.route_stage, call.status) == ("fewshot", "fewshot", "ok")
        assert call.request_body["messages"] == question  # the client's request, without the examples
    assert specialist.requests == []


def test_specialist_model_answers_with_examples_and_new_corrections_are_picked_up(
    gateway, upstream, specialist
):
    client, store, app = gateway
    add_corrected(store, "intent", GOOD[:1], system=False)
    fewshot_route(store, app, model="stub-model", k=4, examples=1)  # a name the price table knows
    assert ask(client)[0] == "fewshot"
    assert specialist.requests[-1]["model"] == "stub-model"
    assert len(specialist.requests[-1]["messages"]) == 3
    add_corrected(store, "intent", GOOD[1:], system=False)
    fewshot_route(store, app, model="stub-model", k=4, examples=3)  # rebuilt in the background
    served_by, call_id, text = ask(client)
    assert (served_by, text) == ("fewshot", "card_arrival")
    assert len(specialist.requests[-1]["messages"]) == 7 and upstream.requests == []
    assert store.get_call(call_id).cost_usd is None  # a specialist's answer: priced by its hardware


def test_a_task_without_good_examples_is_answered_plainly(gateway, upstream, specialist):
    client, store, app = gateway
    store.insert_calls([chat_call("intent", "unjudged", "x")])  # no feedback: not an example
    fewshot_route(store, app, model="base", examples=0)
    served_by, call_id, _ = ask(client)
    assert served_by == "general" and upstream.requests[-1]["messages"] == ASK
    assert store.get_call(call_id).route_stage == "fewshot" and specialist.requests == []


def test_errors_and_invalid_answers_fall_back_to_the_plain_general_model(gateway, upstream, specialist):
    client, store, app = gateway
    add_corrected(store, "intent", GOOD)
    specialist.fail_status = 503
    fewshot_route(store, app, model="base", examples=3)
    for stream in (False, True):
        served_by, call_id, text = ask(client, stream=stream)
        assert (served_by, text) == ("fallback", "echo: where is my card?")
        assert upstream.requests[-1]["messages"] == ASK  # plainly: no examples
        call = store.get_call(call_id)
        assert call.route_stage == "fewshot" and call.fallback_reason.startswith("error: ")
    specialist.fail_status = None
    specialist.reply = "not a label"
    fewshot_route(store, app, model="base", output=OutputSpec("classification", ("card_arrival",)))
    served_by, call_id, _ = ask(client)
    assert served_by == "fallback" and "label set" in store.get_call(call_id).fallback_reason
    fewshot_route(store, app, model="base", fallback=())
    specialist.fail_status = 503
    with pytest.raises(Exception) as info:
        ask(client)
    assert getattr(info.value, "status_code", None) == 503


def test_text_completions_get_worked_examples_before_the_prompt(gateway, upstream):
    client, store, app = gateway
    record = completion_call("tagger", "Text: my card is lost\nIntent:", " lost_card")
    store.insert_calls([record])
    store.add_feedback(record["id"], score=5)
    fewshot_route(store, app, task="tagger", min_score=4, examples=1)
    raw = client.completions.with_raw_response.create(
        model="gpt-x", prompt="Text: card lost?\nIntent:", extra_headers={"X-Loraforge-Task": "tagger"}
    )
    assert raw.headers["x-loraforge-served-by"] == "fewshot"
    assert (
        upstream.requests[-1]["prompt"]
        == "Text: my card is lost\nIntent: lost_card\n\nText: card lost?\nIntent:"
    )
