"""Reading inputs in plain and chat form, writing rows, and resuming from a file a killed run left behind."""

import json

import pytest

from loraforge.errors import DataError
from loraforge.synth.records import load_existing, load_seeds, make_row, read_record, read_records
from loraforge.synth.validation import OutputSpec


def test_plain_rows_pick_the_first_known_column_and_an_output():
    record = read_record({"text": "hi", "label": "greet", "id": 5}, 3, "f")
    assert (record.input, record.output, record.id, record.line_no, record.chat) == (
        "hi",
        "greet",
        "5",
        3,
        False,
    )
    assert read_record({"prompt": "p", "completion": "c"}, 1, "f").output == "c"
    assert read_record({"q": "x", "text": "y"}, 1, "f", input_field="q").input == "x"


def test_chat_rows_use_the_last_user_message():
    row = {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": [{"type": "text", "text": "sec"}, {"type": "image_url"},
                                         {"type": "text", "text": "ond"}]},
            {"role": "assistant", "content": "old answer"},
        ],
        "metadata": {"id": "abc"},
    }  # fmt: skip
    record = read_record(row, 1, "f")
    assert (record.input, record.output, record.id, record.chat) == ("second", "old answer", "abc", True)
    assert [m["content"] for m in record.context] == ["sys", "first", "reply"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"messages": [{"role": "system", "content": "s"}]}, "no user message"),
        ({"text": 3}, "column 'text' is not a string"),
        ({"other": "x"}, r"no 'messages' or one of input, text, prompt, question \(keys: other\)"),
    ],
)
def test_bad_rows(row, message):
    with pytest.raises(DataError, match=message):
        read_record(row, 7, "in.jsonl")


def test_bad_files(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n\n[1, 2]\n')
    with pytest.raises(DataError, match=r"in.jsonl, line 3: expected a JSON object"):
        read_records(path, "input file")
    path.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(DataError, match=r"line 2: not valid JSON"):
        read_records(path, "input file")


def test_seeds_need_valid_outputs(tmp_path):
    spec = OutputSpec(labels=["a", "b"])
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"id": "x1", "input": " hello ", "output": "A"}\n{"text": "bye", "label": "b"}\n')
    seeds = load_seeds(path, spec)
    assert [(s.id, s.input, s.output) for s in seeds] == [("x1", "hello", "a"), ("seed-2", "bye", "b")]
    path.write_text('{"input": "no output"}\n')
    with pytest.raises(DataError, match="line 1: no output"):
        load_seeds(path, spec)


def test_make_row_forms():
    meta = {"teacher_model": "m"}
    chat = make_row("in", "out", meta, "chat", [{"role": "system", "content": "s"}])
    assert chat == {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "in"},
            {"role": "assistant", "content": "out"},
        ],
        "metadata": meta,
    }
    assert make_row("in", "out", meta, "flat") == {"input": "in", "output": "out", "teacher_model": "m"}


def test_resume_keeps_a_complete_last_row_missing_its_newline(tmp_path):
    path = tmp_path / "out.jsonl"
    rows = [make_row(f"in{i}", "out", {"request": i}, "flat") for i in range(2)]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]))
    assert [r.input for r in load_existing(path, "flat")] == ["in0", "in1"]
    assert path.read_text().endswith("}\n")


def test_resume_cuts_a_half_written_row_and_rejects_foreign_rows(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps(make_row("in0", "o", {}, "flat")) + '\n{"input": "in1", "outp')
    assert [r.input for r in load_existing(path, "flat")] == ["in0"]
    assert path.read_text().count("\n") == 1 and "in1" not in path.read_text()
    path.write_text('{"something": "else"}\n')
    with pytest.raises(DataError, match="line 1: not a synth row"):
        load_existing(path, "flat")
