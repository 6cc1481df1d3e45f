"""The official `openai` client against a live server: models, chat, completions, streaming, adapters."""

import asyncio

import httpx

from tests.serve.api.conftest import ADMIN_KEY, API_KEY, NUM_ADAPTERS
from tests.serve.conftest import write_random_adapter

MSG = [{"role": "user", "content": "How do I activate my card?"}]


def test_models_lists_base_and_adapters(client, live):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == live.engine.model_name
    assert ids[1:] == [f"ad{i:02d}" for i in range(NUM_ADAPTERS)]


def test_chat_uses_the_adapter_named_in_model(client, live):
    base = client.chat.completions.create(
        model=live.engine.model_name, messages=MSG, max_tokens=12, temperature=0
    )
    a = client.chat.completions.create(model="ad01", messages=MSG, max_tokens=12, temperature=0)
    b = client.chat.completions.create(model="ad02", messages=MSG, max_tokens=12, temperature=0)
    texts = [r.choices[0].message.content for r in (base, a, b)]
    assert len(set(texts)) == 3
    assert a.model == "ad01" and a.choices[0].message.role == "assistant"
    assert a.usage.completion_tokens == 12 and a.choices[0].finish_reason == "length"
    # Same result as the engine run directly on the chat-templated prompt.
    tok = live.engine.engine.tokenizer
    prompt = tok.apply_chat_template(MSG, tokenize=False, add_generation_prompt=True)
    assert a.usage.prompt_tokens == len(tok(prompt, add_special_tokens=False).input_ids)


def test_completion_and_streaming_agree(client):
    full = client.completions.create(model="ad03", prompt="The quick brown", max_tokens=10, temperature=0)
    chunks = list(
        client.completions.create(
            model="ad03", prompt="The quick brown", max_tokens=10, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 10


def test_chat_streaming_agrees_and_reports_usage(client):
    full = client.chat.completions.create(model="ad04", messages=MSG, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(
        model="ad04",
        messages=MSG,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 10


def test_seed_reproduces_a_sampled_completion(client):
    kw = {"model": "ad05", "prompt": "Question:", "max_tokens": 12, "temperature": 1.0, "top_p": 0.95}
    one = client.completions.create(seed=7, **kw).choices[0].text
    two = client.completions.create(seed=7, **kw).choices[0].text
    others = {client.completions.create(seed=s, **kw).choices[0].text for s in range(8, 12)}
    assert one == two
    assert len(others | {one}) > 1


def test_stop_string_ends_the_completion(client):
    kw = {"model": "ad06", "prompt": "The quick brown", "max_tokens": 12, "temperature": 0}
    text = client.completions.create(**kw).choices[0].text
    stop = text[3:5]
    assert stop and text.find(stop) == 3
    stopped = client.completions.create(stop=[stop], **kw)
    assert stopped.choices[0].text == text[:3] and stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(stop=[stop], stream=True, **kw)
    assert "".join(c.choices[0].text for c in streamed) == text[:3]


def test_64_concurrent_streams_over_16_adapters(live):
    from openai import AsyncOpenAI

    async def main():
        client = AsyncOpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0)
        names = [f"ad{i:02d}" for i in range(NUM_ADAPTERS)]

        async def one(name: str) -> str:
            stream = await client.chat.completions.create(
                model=name, messages=MSG, max_tokens=16, temperature=0, stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        alone = [await one(n) for n in names]  # one at a time: the reference for each adapter
        together = await asyncio.gather(*[one(names[i % NUM_ADAPTERS]) for i in range(64)])
        await client.close()
        return alone, together

    alone, together = asyncio.run(main())
    assert len(set(alone)) == NUM_ADAPTERS  # every adapter answers differently, so a mix-up would show
    assert together == [alone[i % NUM_ADAPTERS] for i in range(64)]


def test_load_and_unload_an_adapter_by_path(client, live, tiny_model_dir, tmp_path):
    path = write_random_adapter(tiny_model_dir, tmp_path / "somewhere", r=8, seed=999)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.post(live.url + "/v1/adapters", json={"name": "extra", "path": str(path)}, headers=headers)
    assert r.status_code == 200 and r.json()["resident"] is True
    assert "extra" in [m.id for m in client.models.list().data]
    out = client.completions.create(model="extra", prompt="abc", max_tokens=4, temperature=0)
    assert out.usage.completion_tokens == 4
    r = httpx.delete(live.url + "/v1/adapters/extra", headers=headers)
    assert r.status_code == 200
    assert "extra" not in [m.id for m in client.models.list().data]
    assert "extra" not in live.engine.engine.adapters.resident


def test_metrics_are_labeled_per_adapter(client, live):
    client.completions.create(model="ad07", prompt="abc", max_tokens=3, temperature=0)
    text = httpx.get(live.url + "/metrics").text
    assert 'loraforge_requests_total{endpoint="completions",model="ad07",status="ok"}' in text
    assert 'loraforge_completion_tokens_total{model="ad07"}' in text
    assert "loraforge_time_to_first_token_seconds_bucket" in text
    assert "loraforge_time_per_output_token_seconds_bucket" in text
    assert "loraforge_queue_depth" in text and "loraforge_resident_adapters" in text
    assert httpx.get(live.url + "/health").json()["status"] == "ok"
