"""`synth generate` against the scripted teacher: every drop reason, dedup kind and retry counted exactly."""

import asyncio
import hashlib
import json
from datetime import datetime
from pathlib import Path

import jsonschema
import pytest

from loraforge.errors import DataError
from loraforge.synth.dedup import jaccard, normalize, shingles
from loraforge.synth.prompts import GENERATE_VERSION, Seed, generate_schema
from loraforge.synth.records import load_seeds
from loraforge.synth.synthesize import GenerateConfig, synthesize
from loraforge.synth.validation import OutputSpec
from tests.synth.scripted import MODEL, Answer, Fail, Sleeps, make_client

LABELS = ["card_arrival", "card_linking", "exchange_rate"]
DESCRIPTION = "Classify a bank customer's message into the intent it expresses."
SEEDS = [
    {"id": "s-arrival", "text": "I am still waiting on my card?", "label": "card_arrival"},
    {"text": "How do I link a new card?", "label": "card_linking"},
    {"text": "What is the exchange rate?", "label": "exchange_rate"},
]
TEST_SET = ["How do I locate my card?", "Why is my exchange rate wrong?"]

A = ("Where is my new card? It has been ten days.", "card_arrival")
B = ("How do I link my card to the app?", "card_linking")
C = ("What exchange rate do you use for euros?", "exchange_rate")
D = ("Can I add a card I already own to my account?", "card_linking")
E = ("Why did I get so few dollars for my pounds?", "exchange_rate")
F = ("My card still hasn't shown up in the post.", "card_arrival")
G = ("Is the rate better if I exchange on weekdays?", "exchange_rate")
H = ("The card I ordered last month never arrived.", "card_arrival")
I_ = ("Can I use my card in the app right away after linking?", "card_linking")
J = ("How much will 100 GBP be in yen today?", "exchange_rate")


def ex(pair: tuple[str, str]) -> dict[str, str]:
    return {"input": pair[0], "output": pair[1]}


def dumps(*items) -> str:
    return json.dumps([ex(i) if isinstance(i, tuple) else i for i in items])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def pair_of(row: dict) -> tuple[str, str]:
    return row["messages"][0]["content"], row["messages"][1]["content"]


def run(config: GenerateConfig, client, progress=None):
    async def go():
        async with client:
            return await synthesize(config, client, progress)

    return asyncio.run(go())


@pytest.fixture
def seeds(tmp_path) -> list[Seed]:
    return load_seeds(write_jsonl(tmp_path / "seeds.jsonl", SEEDS), OutputSpec(labels=LABELS))


def config_for(tmp_path: Path, seeds: list[Seed], **overrides) -> GenerateConfig:
    values = dict(
        description=DESCRIPTION,
        spec=OutputSpec(labels=LABELS),
        n=8,
        out=tmp_path / "out.jsonl",
        seeds=seeds,
        test_texts=TEST_SET,
        per_request=5,
        seeds_per_request=2,
        concurrency=1,
    )
    values.update(overrides)
    return GenerateConfig(**values)


def test_scenario_texts_are_what_the_scenario_needs():
    """Guards the script below: the near-duplicate is near, the valid texts are far from everything."""
    a, near = shingles(normalize(A[0])), shingles(normalize(A[0] + " now"))
    assert 0.8 <= jaccard(a, near) < 1
    valid = [A, B, C, D, E, F, G, H, I_, J]
    others = [s["text"] for s in SEEDS] + TEST_SET
    for i, (text, _) in enumerate(valid):
        for other in [t for t, _ in valid[i + 1 :]] + others:
            assert jaccard(shingles(normalize(text)), shingles(normalize(other))) < 0.8, (text, other)


def test_every_branch_counted_exactly(tmp_path, seeds, teacher_server):
    teacher_server.push(
        Answer("```json\n" + dumps(A, ("Can I get a refund for this?", "refund"), (A[0].lower(), A[1]),
                                   (A[0] + " now", A[1]), (DESCRIPTION, "card_arrival")) + "\n```"),
        Fail(429, {"Retry-After": "3"}),
        Answer("Here:\n" + dumps(B, C, ("I am still waiting on my card", "card_arrival")) + "\nMore?"),
        Answer('Sure: {"input": "x", "output": }'),
        Fail(500),
        Answer(dumps(D, E)[:-1] + ', {"input": "cut', finish_reason="length"),
        Answer(dumps(("How do I locate my card", "card_arrival"), {"text": "no input key", "output": "x"},
                     ("", "card_arrival"), F)),
        Answer("too slow", delay=1.0),
        Answer(json.dumps(ex(G))),
        Answer(""),
        Answer(dumps(H, I_, J)),
    )  # fmt: skip
    sleeps = Sleeps()
    progress: list[int] = []
    client = make_client(teacher_server, sleeps, timeout_s=0.5)
    summary = run(config_for(tmp_path, seeds), client, progress.append)

    assert summary.complete and summary.error is None
    assert (summary.requests, summary.generated, summary.valid, summary.total_rows) == (8, 21, 8, 8)
    assert summary.dropped == {
        "not_in_labels": 1, "echo": 1, "malformed_json": 1, "truncated": 1,
        "missing_fields": 1, "empty": 2, "surplus": 2,
    }  # fmt: skip
    assert summary.duplicates == {"exact": 1, "near": 1, "seed": 1, "test": 1}
    assert summary.generated == summary.valid + sum(summary.dropped.values()) + sum(
        summary.duplicates.values()
    )
    assert summary.retries == {"429": 1, "500": 1, "timeout": 1}
    assert sleeps.delays == [3.0, 0.01, 0.01]
    assert summary.per_label == {"card_arrival": 3, "card_linking": 2, "exchange_rate": 3}
    assert progress[0] == 0 and progress[-1] == 8 and progress == sorted(progress)

    ids = [logged.request_id for logged in teacher_server.log]
    assert ids == [f"synth-generate-{i}" for i in (0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 7)]
    rows = read_rows(tmp_path / "out.jsonl")
    assert [pair_of(r) for r in rows] == [A, B, C, D, E, F, G, H]
    assert [r["metadata"]["request"] for r in rows] == [0, 1, 1, 3, 3, 4, 5, 7]


def test_rows_are_openai_chat_with_provenance(tmp_path, seeds, teacher_server):
    teacher_server.push(Answer(dumps(A, B)))
    summary = run(config_for(tmp_path, seeds, n=2), make_client(teacher_server))
    assert summary.valid == 2
    row = read_rows(tmp_path / "out.jsonl")[0]
    assert set(row) == {"messages", "metadata"}
    assert row["messages"] == [{"role": "user", "content": A[0]}, {"role": "assistant", "content": A[1]}]
    meta = row["metadata"]
    assert (meta["source"], meta["teacher_model"], meta["prompt_version"]) == (
        "synth-generate",
        MODEL,
        GENERATE_VERSION,
    )
    assert datetime.fromisoformat(meta["created_at"]).tzinfo is not None
    # The seeds recorded are exactly the ones the prompt showed, and the prompt asked for rotating labels.
    prompt = teacher_server.log[0].user
    assert len(meta["seed_ids"]) == 2
    by_id = {s.id: s for s in seeds}
    assert all(by_id[i].input in prompt for i in meta["seed_ids"])
    assert sum(s.input in prompt for s in seeds) == 2
    assert "in this order: card_arrival, card_linking, exchange_rate, card_arrival, card_linking." in prompt
    assert DESCRIPTION in prompt and all(label in prompt for label in LABELS)


def test_seed_and_label_rotation_covers_everything(tmp_path, seeds, teacher_server):
    teacher_server.push(*[Answer(dumps(pair)) for pair in (A, B, C)])
    run(config_for(tmp_path, seeds, n=3, per_request=1), make_client(teacher_server))
    shown = [{s.id for s in seeds if s.input in logged.user} for logged in teacher_server.log]
    assert all(len(ids) == 2 for ids in shown)
    assert set().union(*shown) == {"s-arrival", "seed-2", "seed-3"}
    focus = [logged.user.split("in this order: ")[1].split(".")[0] for logged in teacher_server.log]
    assert focus == LABELS


def test_flat_format_and_json_schema_outputs(tmp_path, teacher_server):
    schema = {
        "type": "object",
        "properties": {"intent": {"enum": LABELS}, "urgent": {"type": "boolean"}},
        "required": ["intent", "urgent"],
    }
    teacher_server.push(
        Answer(json.dumps([
            {"input": "My card is late, I fly soon!", "output": {"intent": "card_arrival", "urgent": True}},
            {"input": "What rate applies to dollars?", "output": {"intent": "exchange_rate"}},
            {"input": "Where do I see the rate for yen?", "output": "exchange_rate"},
            {"input": "Link my second card please", "output": '{"intent": "card_linking", "urgent": false}'},
        ]))
    )  # fmt: skip
    config = config_for(tmp_path, [], n=2, spec=OutputSpec(schema=schema), fmt="flat", test_texts=[])
    summary = run(config, make_client(teacher_server))
    assert (summary.valid, summary.dropped) == (2, {"schema_violation": 2})
    rows = read_rows(tmp_path / "out.jsonl")
    assert [json.loads(r["output"]) for r in rows] == [
        {"intent": "card_arrival", "urgent": True},
        {"intent": "card_linking", "urgent": False},
    ]
    assert rows[0]["input"] == "My card is late, I fly soon!"
    assert rows[0]["teacher_model"] == MODEL and rows[0]["seed_ids"] == [] and "metadata" not in rows[0]
    assert "JSON Schema" in teacher_server.log[0].user


def test_structured_output_asks_for_the_schema_of_the_examples(tmp_path, seeds, teacher_server):
    answer = {"examples": [ex(A), ex(B)]}
    teacher_server.push(Answer(json.dumps(answer)))
    summary = run(
        config_for(tmp_path, seeds, n=2, per_request=2, structured=True), make_client(teacher_server)
    )
    assert (summary.valid, summary.dropped, summary.duplicates) == (2, {}, {})
    assert [pair_of(r) for r in read_rows(tmp_path / "out.jsonl")] == [A, B]
    fmt = teacher_server.log[0].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema == generate_schema(OutputSpec(labels=LABELS), 2)
    # The schema takes the answer it was built for and refuses a foreign label or a wrong count.
    jsonschema.validate(answer, schema)
    for bad in ({"examples": [ex(A), ex(("Refund?", "refund"))]}, {"examples": [ex(A)]}, [ex(A), ex(B)]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_structured_output_with_a_users_schema_is_not_strict(tmp_path, teacher_server):
    schema = {"type": "object", "properties": {"intent": {"enum": LABELS}}}
    teacher_server.push(
        Answer(json.dumps({"examples": [{"input": "Card late", "output": {"intent": "card_arrival"}}]}))
    )
    config = config_for(tmp_path, [], n=1, per_request=1, spec=OutputSpec(schema=schema), structured=True)
    assert run(config, make_client(teacher_server)).valid == 1
    fmt = teacher_server.log[0].body["response_format"]["json_schema"]
    assert fmt["strict"] is False
    assert fmt["schema"]["properties"]["examples"]["items"]["properties"]["output"] == schema


def test_resume_after_teacher_fails_hard(tmp_path, seeds, teacher_server):
    """Run 1 saves 4 rows then the teacher dies; run 2 re-asks nothing saved, rebuilds dedup, ends at N."""
    out = tmp_path / "out.jsonl"
    config = config_for(tmp_path, seeds, n=6, per_request=2)
    teacher_server.push(Answer(dumps(A, B)), Answer(dumps(C, D)))  # then 500 forever (script exhausted)
    first = run(config, make_client(teacher_server, Sleeps(), max_retries=1))
    assert first.error and "failed after 2 attempts" in first.error and not first.complete
    assert (first.valid, first.total_rows, first.requests) == (4, 4, 2)
    assert len(teacher_server.log) == 4  # 2 answers + the failing request tried twice
    saved_text = out.read_text()
    saved_ids = {f"synth-generate-{r['metadata']['request']}" for r in read_rows(out)}
    assert saved_ids == {"synth-generate-0", "synth-generate-1"}

    teacher_server.reset()
    teacher_server.push(Answer(dumps((B[0].upper(), B[1]), E)), Answer(dumps(F, G)))
    second = run(config, make_client(teacher_server))
    assert second.complete and second.error is None
    assert (second.already_saved, second.requests, second.valid, second.total_rows) == (4, 2, 2, 6)
    assert second.duplicates == {"exact": 1}  # the repeat of a row saved by run 1 is caught after the restart
    assert second.dropped == {"surplus": 1}
    asked = [logged.request_id for logged in teacher_server.log]
    assert asked == ["synth-generate-2", "synth-generate-3"] and not saved_ids & set(asked)
    assert out.read_text().startswith(saved_text)
    assert [pair_of(r) for r in read_rows(out)] == [A, B, C, D, E, F]
    assert second.per_label == {"card_arrival": 2, "card_linking": 2, "exchange_rate": 2}

    teacher_server.reset()
    third = run(config, make_client(teacher_server))
    assert third.complete and third.requests == 0 and teacher_server.log == []


def test_resume_drops_a_half_written_last_line(tmp_path, seeds, teacher_server):
    out = tmp_path / "out.jsonl"
    teacher_server.push(Answer(dumps(A)))
    run(config_for(tmp_path, seeds, n=1, per_request=1), make_client(teacher_server))
    with out.open("a") as fh:
        fh.write('{"messages": [{"role": "user", "content": "half')  # a run killed mid-write
    teacher_server.push(Answer(dumps(B)))
    summary = run(config_for(tmp_path, seeds, n=2, per_request=1), make_client(teacher_server))
    assert (summary.already_saved, summary.total_rows) == (1, 2)
    assert [pair_of(r) for r in read_rows(out)] == [A, B]


def test_concurrency_is_bounded_and_no_request_is_wasted(tmp_path, teacher_server):
    counter = iter(range(1000))
    teacher_server.responder = lambda logged: Answer(
        dumps((f"Question {hashlib.sha1(str(next(counter)).encode()).hexdigest()}", "card_arrival")),
        delay=0.05,
        hold_until_in_flight=4,
    )
    config = config_for(tmp_path, [], n=12, per_request=1, concurrency=4, test_texts=[])
    summary = run(config, make_client(teacher_server))
    assert summary.complete and summary.total_rows == 12
    assert teacher_server.max_in_flight == 4
    assert summary.requests == 12 and len(teacher_server.log) == 12
    assert len({logged.request_id for logged in teacher_server.log}) == 12


def test_request_budget_stops_a_useless_teacher(tmp_path, seeds, teacher_server):
    teacher_server.responder = lambda logged: Answer("I am not able to produce examples.")
    summary = run(config_for(tmp_path, seeds, n=5, max_requests=3), make_client(teacher_server))
    assert not summary.complete and summary.error is None
    assert summary.requests == 3 and summary.dropped == {"malformed_json": 3}
    assert "request budget of 3 used up with 0/5 rows" in summary.stop_reason


def test_resume_refuses_a_file_in_the_other_format(tmp_path, seeds, teacher_server):
    teacher_server.push(Answer(dumps(A)))
    run(config_for(tmp_path, seeds, n=1, fmt="flat"), make_client(teacher_server))
    with pytest.raises(DataError, match="holds flat rows; resume with --format flat"):
        run(config_for(tmp_path, seeds, n=2), make_client(teacher_server))


def test_label_names_and_placeholders_as_inputs_are_echoes(tmp_path, seeds, teacher_server):
    teacher_server.push(
        Answer(dumps(("exchange_rate", "exchange_rate"), ("<a new input>", "card_arrival"), B))
    )
    summary = run(config_for(tmp_path, seeds, n=1, per_request=3), make_client(teacher_server))
    assert (summary.valid, summary.dropped) == (1, {"echo": 2})
