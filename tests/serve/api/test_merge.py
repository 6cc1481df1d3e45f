"""`merge` (extra_body) through the official client: a weighted merge of loaded adapters, served under its
own deterministic name, computed once, validated with OpenAI-shaped errors."""

import httpx
import openai
import pytest

from tests.serve.api.conftest import API_KEY

MSG = [{"role": "user", "content": "How do I activate my card?"}]


def test_merge_is_served_and_cached(client, live):
    base = live.engine.model_name
    merge = {"adapters": {"ad03": 0.5, "ad04": 0.5}, "method": "linear"}  # ranks 4 and 8
    first = client.chat.completions.create(
        model=base, messages=MSG, max_tokens=8, temperature=0, extra_body={"merge": merge}
    )
    name = first.model
    assert name.startswith("merge-linear-") and live.engine.is_resident(name)
    merges = dict(live.engine.merger.merges)
    again = client.chat.completions.create(
        model=base, messages=MSG, max_tokens=8, temperature=0, extra_body={"merge": merge}
    )
    assert again.model == name and dict(live.engine.merger.merges) == merges  # a cache hit: no new merge
    assert again.choices[0].message.content == first.choices[0].message.content
    # The merged adapter is now a model of its own.
    by_name = client.chat.completions.create(model=name, messages=MSG, max_tokens=8, temperature=0)
    assert by_name.choices[0].message.content == first.choices[0].message.content
    assert name in [m.id for m in client.models.list().data]
    alone = client.chat.completions.create(model="ad03", messages=MSG, max_tokens=8, temperature=0)
    assert alone.choices[0].message.content != first.choices[0].message.content
    ties = {"adapters": {"ad03": 1.0, "ad04": 0.5}, "method": "ties", "density": 0.2}
    streamed = client.completions.create(
        model=base, prompt="Hello", max_tokens=5, temperature=0, stream=True, extra_body={"merge": ties}
    )
    chunks = list(streamed)
    assert chunks[0].model.startswith("merge-ties-") and chunks[-1].choices[0].finish_reason == "length"


def test_bad_merges_are_openai_errors(client, live):
    base = live.engine.model_name
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(
            model=base, prompt="x", max_tokens=2, extra_body={"merge": {"adapters": {"ad01": 1, "nope": 1}}}
        )
    assert err.value.body["param"] == "merge.adapters" and err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model="ad01", prompt="x", max_tokens=2, extra_body={"merge": {"adapters": {"ad02": 1}}}
        )
    assert err.value.body["param"] == "model"
    for merge in (
        {"adapters": {}},
        {"adapters": {"ad01": 1}, "method": "dare"},
        {"adapters": {"ad01": 1}, "x": 1},
    ):
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=base, prompt="x", max_tokens=2, extra_body={"merge": merge})
    # A weight that is not finite (1e999 parses as inf): a 400, never a merge.
    body = '{"model": "BASE", "prompt": "x", "merge": {"adapters": {"ad01": 1e999}}}'.replace("BASE", base)
    r = httpx.post(
        live.url + "/v1/completions",
        content=body,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("merge.adapters")
