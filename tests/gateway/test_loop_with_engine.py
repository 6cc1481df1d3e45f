"""The loop on real parts: `loraforge serve` (tiny model) as the upstream, the gateway in front, the official
client as the caller; then a dataset from the logged calls, and an adapter fine-tuned on that dataset."""

import json

import pytest

from loraforge.config import validate_config
from loraforge.curation.datasets import DatasetFilter, build_dataset
from loraforge.train.run import run_training
from tests.gateway.conftest import start_gateway
from tests.serve.api.conftest import start_server
from tests.serve.conftest import write_random_adapter


@pytest.fixture(scope="module")
def engine_upstream(tiny_model_dir, tmp_path_factory):
    registry = tmp_path_factory.mktemp("adapters")
    for i in range(2):
        write_random_adapter(tiny_model_dir, registry / f"ad{i:02d}", r=4, seed=7 + i)
    server = start_server(tiny_model_dir, registry, api_key=None)
    yield server
    server.stop()


def test_gateway_logs_engine_calls_and_the_dataset_trains_an_adapter(
    engine_upstream, tmp_path, tiny_model_dir
):
    from loraforge.store import Store

    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    settings, app, server = start_gateway(tmp_path, store_url, engine_upstream.url + "/v1", timeout_s=60.0)
    store = Store(store_url)
    try:
        with server:
            from openai import OpenAI

            client = OpenAI(base_url=f"{server.url}/v1", api_key="sk-any", max_retries=0, timeout=60)
            replies = {}
            for i in range(8):
                model = "ad00" if i % 2 else "ad01"  # two different adapters served by the engine
                messages = [{"role": "user", "content": f"where is my card number {i}?"}]
                if i % 3 == 0:
                    chunks = client.chat.completions.create(
                        model=model,
                        messages=messages,
                        max_tokens=6,
                        temperature=0,
                        stream=True,
                        extra_headers={"X-Loraforge-Task": "cards"},
                    )
                    replies[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                else:
                    reply = client.chat.completions.create(
                        model=model,
                        messages=messages,
                        max_tokens=6,
                        temperature=0,
                        extra_body={"metadata": {"task": "cards", "user": f"u{i}"}},
                    )
                    replies[i] = reply.choices[0].message.content
        calls = store.calls(task="cards")
        assert len(calls) == 8
        assert {call.served_model for call in calls} == {"ad00", "ad01"}
        assert all(call.status == "ok" and call.prompt_tokens and call.completion_tokens for call in calls)
        logged = {
            call.request_body["messages"][0]["content"]: call.response_body["choices"][0]["message"][
                "content"
            ]
            for call in calls
        }
        for i, reply in replies.items():
            assert logged[f"where is my card number {i}?"] == reply

        result = build_dataset(
            store, "cards", DatasetFilter("cards", test_fraction=0.25), root=tmp_path / "ds"
        )
    finally:
        store.close()
    rows = [json.loads(line) for line in (result.path / "train.jsonl").open()]
    assert rows and all(row["messages"][-1]["role"] == "assistant" for row in rows)

    config = validate_config(
        {
            "base_model": str(tiny_model_dir),
            "data": {"train": str(result.path / "train.jsonl"), "test": str(result.path / "test.jsonl")},
            "trainer": {"max_steps": 3, "batch_size": 4, "precision": "fp32"},
            "evaluation": {"task": "generation", "max_new_tokens": 6},
        }
    )
    trained = run_training(config, tmp_path / "run", show_progress=False)
    assert trained.summary.train_examples == len(rows)
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
