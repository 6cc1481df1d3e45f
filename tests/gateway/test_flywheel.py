"""Traffic through the gateway, feedback on it, and a dataset built from both: the flywheel end to end."""

import json

import httpx

from loraforge.curation.call_examples import input_hash
from loraforge.curation.datasets import DatasetFilter, build_dataset


def test_traffic_feedback_dataset(gateway, tmp_path):
    client = gateway.client()
    ids = {}
    questions = [f"ticket {i}: my order is late" for i in range(12)] + ["ticket 0:  my order   is late"]
    for i, question in enumerate(questions):
        raw = client.chat.completions.with_raw_response.create(
            model="stub-model",
            messages=[
                {"role": "system", "content": "You are support."},
                {"role": "user", "content": question},
            ],
            stream=bool(i % 2),
            extra_body={"metadata": {"task": "support", "customer": f"c{i}"}},
        )
        list(raw.parse()) if i % 2 else raw.parse()
        ids[i] = raw.headers["x-loraforge-call-id"]
    client.chat.completions.create(
        model="stub-model",
        messages=[{"role": "user", "content": "unrelated"}],
        extra_headers={"X-Loraforge-Task": "x"},
    )

    def feedback(call_id, **fields):
        r = httpx.post(f"{gateway.url}/v1/feedback", json={"call_id": call_id, **fields})
        assert r.status_code == 201

    feedback(ids[1], score=0.0, comment="useless")
    feedback(ids[2], score=1.0, corrected_output="Sorry! Your order ships today.")

    filt = DatasetFilter("support", min_score=0.5, use_corrections=True, dedupe=True, test_fraction=0.25)
    result = build_dataset(gateway.store, "support-v", filt, root=tmp_path)
    assert result.counts["selected"] == 13
    assert (result.counts["low_score"], result.counts["corrected"], result.counts["duplicates"]) == (1, 1, 1)
    rows = [json.loads(line) for f in ("train.jsonl", "test.jsonl") for line in (result.path / f).open()]
    assert len(rows) == 11
    outputs = {row["messages"][1]["content"]: row["messages"][-1]["content"] for row in rows}
    assert outputs["ticket 2: my order is late"] == "Sorry! Your order ships today."
    assert "ticket 1: my order is late" not in outputs
    assert outputs["ticket 3: my order is late"] == "echo: ticket 3: my order is late"  # a streamed call
    assert all(row["messages"][0] == {"role": "system", "content": "You are support."} for row in rows)
    train = {input_hash(json.loads(line)["messages"][:-1]) for line in (result.path / "train.jsonl").open()}
    test = {input_hash(json.loads(line)["messages"][:-1]) for line in (result.path / "test.jsonl").open()}
    assert train.isdisjoint(test)
    assert build_dataset(gateway.store, "support-v", filt, root=tmp_path).reused
