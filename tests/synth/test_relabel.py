"""`synth relabel` on plain JSONL and on chat JSONL (gateway-log style), with exact counts and resume."""

import asyncio
import json
from pathlib import Path

import pytest

from loraforge.errors import DataError, LoraforgeError
from loraforge.synth.relabel import RelabelConfig, relabel
from loraforge.synth.validation import OutputSpec
from tests.synth.scripted import Answer, Fail, Sleeps, make_client

LABELS = ["card_arrival", "card_linking", "exchange_rate"]
PLAIN = [
    {"id": 17, "text": "I am still waiting on my card?", "label": "card_arrival"},
    {"text": "How do I link my card?"},
    {"text": "What rate do you use for euros?"},
    {"text": "   "},
    {"text": "My card has not come yet"},
]
SYSTEM = {"role": "system", "content": "You are a concise support bot."}
CHAT = [
    {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "My card is lost"},
            {"role": "assistant", "content": "old"},
        ],
        "metadata": {"id": "log-1"},
    },
    {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Block my card please"},
        ]
    },
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is my balance?"}]}]},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(config: RelabelConfig, client):
    async def go():
        async with client:
            return await relabel(config, client)

    return asyncio.run(go())


def plain_config(tmp_path: Path, **overrides) -> RelabelConfig:
    values = dict(
        inputs=write_jsonl(tmp_path / "in.jsonl", PLAIN),
        out=tmp_path / "out.jsonl",
        spec=OutputSpec(labels=LABELS),
        description="Classify a bank customer's message.",
        concurrency=1,
    )
    values.update(overrides)
    return RelabelConfig(**values)


def test_plain_jsonl_with_labels(tmp_path, teacher_server):
    teacher_server.push(
        Answer("card_arrival"),
        Answer("refund"),
        Answer('{"label": "Card_Linking"}'),
        Answer('```\n"exchange_rate"\n```'),
        Answer("card_arr", finish_reason="length"),
        Answer("card_arrival"),
    )
    summary = run(plain_config(tmp_path), make_client(teacher_server))
    assert summary.complete
    assert (summary.requested, summary.requests, summary.valid, summary.unlabeled) == (5, 6, 4, 0)
    assert summary.dropped == {"empty": 1, "not_in_labels": 1, "truncated": 1}
    assert summary.per_label == {"card_arrival": 2, "card_linking": 1, "exchange_rate": 1}
    rows = read_rows(tmp_path / "out.jsonl")
    assert [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows] == [
        ("I am still waiting on my card?", "card_arrival"),
        ("How do I link my card?", "card_linking"),
        ("What rate do you use for euros?", "exchange_rate"),
        ("My card has not come yet", "card_arrival"),
    ]
    meta = rows[0]["metadata"]
    assert (meta["source"], meta["prompt_version"], meta["source_line"]) == ("synth-relabel", "relabel-v1", 1)
    assert (meta["source_id"], meta["previous_output"], meta["source_file"]) == (
        "17",
        "card_arrival",
        "in.jsonl",
    )
    assert [r["metadata"]["source_line"] for r in rows] == [1, 2, 3, 5]
    first = teacher_server.log[0]
    assert first.user == "I am still waiting on my card?"
    assert "exchange_rate" in first.prompt and "Reply with exactly one label" in first.prompt
    assert [logged.request_id for logged in teacher_server.log] == [
        "synth-relabel-1-0", "synth-relabel-2-0", "synth-relabel-2-1", "synth-relabel-3-0",
        "synth-relabel-5-0", "synth-relabel-5-1",
    ]  # fmt: skip


def test_inputs_that_stay_invalid_are_left_unlabeled(tmp_path, teacher_server):
    teacher_server.responder = lambda logged: Answer("no idea")
    summary = run(plain_config(tmp_path, max_attempts=3), make_client(teacher_server))
    assert not summary.complete and summary.valid == 0 and summary.unlabeled == 4
    assert summary.dropped == {"empty": 1, "not_in_labels": 12} and summary.requests == 12


def test_configurable_input_column(tmp_path, teacher_server):
    rows = [{"query": "Where is my card?", "text": "not this one"}]
    config = plain_config(tmp_path, inputs=write_jsonl(tmp_path / "q.jsonl", rows), input_field="query")
    teacher_server.push(Answer("card_arrival"))
    assert run(config, make_client(teacher_server)).valid == 1
    assert teacher_server.log[0].user == "Where is my card?"
    with pytest.raises(DataError, match=r"q.jsonl, line 1: no column 'prompt'"):
        run(
            plain_config(tmp_path, inputs=tmp_path / "q.jsonl", input_field="prompt"),
            make_client(teacher_server),
        )


def test_chat_jsonl_free_text_is_replayed_and_context_kept(tmp_path, teacher_server):
    teacher_server.push(
        Answer("Please freeze your card in the app right away."),
        Answer("Block my card please."),  # an echo of the input
        Answer("Your card is now blocked."),
        Answer("You can see your balance on the home screen."),
    )
    config = RelabelConfig(
        inputs=write_jsonl(tmp_path / "logs.jsonl", CHAT),
        out=tmp_path / "out.jsonl",
        spec=OutputSpec(),
        concurrency=1,
    )
    summary = run(config, make_client(teacher_server))
    assert (summary.valid, summary.requests, summary.dropped) == (3, 4, {"echo": 1})
    sent = [logged.body["messages"] for logged in teacher_server.log]
    assert sent[0] == [SYSTEM, {"role": "user", "content": "My card is lost"}]
    assert sent[1] == CHAT[1]["messages"]
    assert sent[3] == [{"role": "user", "content": "What is my balance?"}]
    rows = read_rows(tmp_path / "out.jsonl")
    assert rows[0]["messages"] == [
        SYSTEM,
        {"role": "user", "content": "My card is lost"},
        {"role": "assistant", "content": "Please freeze your card in the app right away."},
    ]
    assert rows[0]["metadata"]["previous_output"] == "old" and rows[0]["metadata"]["source_id"] == "log-1"
    assert rows[1]["messages"] == [
        *CHAT[1]["messages"],
        {"role": "assistant", "content": "Your card is now blocked."},
    ]
    assert set(rows[1]) == {"messages", "metadata"}


def test_chat_jsonl_with_labels_uses_the_labeling_prompt_and_flat_output(tmp_path, teacher_server):
    teacher_server.responder = lambda logged: Answer("card_arrival")
    config = RelabelConfig(
        inputs=write_jsonl(tmp_path / "logs.jsonl", CHAT),
        out=tmp_path / "out.jsonl",
        spec=OutputSpec(labels=LABELS),
        fmt="flat",
    )
    summary = run(config, make_client(teacher_server))
    assert summary.valid == 3
    assert all(len(logged.body["messages"]) == 2 for logged in teacher_server.log)
    assert sorted(logged.user for logged in teacher_server.log) == sorted(
        ["My card is lost", "Block my card please", "What is my balance?"]
    )
    rows = read_rows(tmp_path / "out.jsonl")
    assert {r["input"] for r in rows} == {"My card is lost", "Block my card please", "What is my balance?"}
    assert all(r["output"] == "card_arrival" and r["source"] == "synth-relabel" for r in rows)


def test_json_schema_answers(tmp_path, teacher_server):
    schema = {"type": "object", "properties": {"urgent": {"type": "boolean"}}, "required": ["urgent"]}
    teacher_server.push(
        Answer('Here you go: {"urgent": true} done'), Answer('{"urgent": "yes"}'), Answer("{}")
    )
    rows = [{"input": "My card was stolen!"}, {"input": "What is the rate?"}]
    config = plain_config(
        tmp_path,
        inputs=write_jsonl(tmp_path / "i.jsonl", rows),
        spec=OutputSpec(schema=schema),
        max_attempts=2,
    )
    summary = run(config, make_client(teacher_server))
    assert (summary.valid, summary.unlabeled, summary.dropped) == (1, 1, {"schema_violation": 2})
    assert read_rows(tmp_path / "out.jsonl")[0]["messages"][1]["content"] == '{"urgent": true}'
    assert "JSON Schema" in teacher_server.log[0].prompt


def test_test_set_inputs_are_not_labeled(tmp_path, teacher_server):
    teacher_server.responder = lambda logged: Answer("card_linking")
    config = plain_config(tmp_path, test_texts=["how do I link my card"])
    summary = run(config, make_client(teacher_server))
    assert summary.duplicates == {"test": 1} and summary.valid == 3
    assert "How do I link my card?" not in [logged.user for logged in teacher_server.log]


def test_resume_asks_only_for_unsaved_inputs(tmp_path, teacher_server):
    teacher_server.push(Answer("card_arrival"), Answer("card_linking"), Fail(503))
    config = plain_config(tmp_path)
    first = run(config, make_client(teacher_server, Sleeps(), max_retries=0))
    assert first.error and "HTTP 503" in first.error and first.total_rows == 2
    saved = (tmp_path / "out.jsonl").read_text()

    teacher_server.reset()
    teacher_server.responder = lambda logged: Answer("exchange_rate")
    second = run(config, make_client(teacher_server))
    assert second.complete and (second.already_saved, second.valid, second.total_rows) == (2, 2, 4)
    assert [logged.user for logged in teacher_server.log] == [
        "What rate do you use for euros?",
        "My card has not come yet",
    ]
    assert (tmp_path / "out.jsonl").read_text().startswith(saved)
    assert [r["metadata"]["source_line"] for r in read_rows(tmp_path / "out.jsonl")] == [1, 2, 3, 5]

    teacher_server.reset()
    third = run(config, make_client(teacher_server))
    assert third.requests == 0 and teacher_server.log == []


def test_resume_refuses_a_changed_input_file(tmp_path, teacher_server):
    teacher_server.responder = lambda logged: Answer("card_arrival")
    config = plain_config(tmp_path)
    run(config, make_client(teacher_server))
    write_jsonl(config.inputs, [{"text": "something else entirely"}, *PLAIN[1:]])
    with pytest.raises(DataError, match="changed since"):
        run(config, make_client(teacher_server))


def test_output_must_not_overwrite_the_input(tmp_path, teacher_server):
    config = plain_config(tmp_path)
    config.out = config.inputs
    with pytest.raises(LoraforgeError, match="is the input file"):
        run(config, make_client(teacher_server))
    assert teacher_server.log == []
