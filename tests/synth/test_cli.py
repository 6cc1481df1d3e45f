"""`loraforge synth` end to end through the CLI entry point: results, summaries, and one-line user errors."""

import json
import re
import sys
from pathlib import Path

import pytest

from loraforge.cli.main import main
from loraforge.cli.synth import resolve_description
from tests.synth.scripted import MODEL, Answer, Fail, free_port

LABELS = ["card_arrival", "card_linking", "exchange_rate"]


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["loraforge", "synth", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    paths = {
        "labels": tmp_path / "labels.json",
        "labels_txt": tmp_path / "labels.txt",
        "seeds": tmp_path / "seeds.jsonl",
        "inputs": tmp_path / "in.jsonl",
        "task": tmp_path / "task.md",
    }
    paths["labels"].write_text(json.dumps(LABELS))
    paths["labels_txt"].write_text("\n".join(LABELS) + "\n")
    paths["seeds"].write_text(json.dumps({"input": "Where is my card?", "output": "card_arrival"}) + "\n")
    paths["inputs"].write_text(json.dumps({"text": "How do I link my card?"}) + "\n")
    paths["task"].write_text("Classify a bank customer's message into its intent.\n")
    return paths


def generate_args(url: str, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "generate", "--teacher-url", url, "--teacher-model", MODEL, "--task-description", str(files["task"]),
        "--labels", str(files["labels"]), "--n", "2", "--out", str(out), *extra,
    ]  # fmt: skip


def test_generate_writes_rows_and_summary(monkeypatch, capsys, tmp_path, files, teacher_server):
    teacher_server.push(
        Answer(json.dumps([{"input": "My card never came.", "output": "card_arrival"},
                           {"input": "Where is my card?", "output": "card_arrival"},
                           {"input": "Link a card to my account", "output": "card_linking"}]))
    )  # fmt: skip
    out, summary_json = tmp_path / "out.jsonl", tmp_path / "summary.json"
    args = generate_args(teacher_server.url, files, out, "--seed-examples", files["seeds"])
    code, stdout, _ = cli(monkeypatch, capsys, *args, "--summary-json", summary_json)
    assert code == 0
    summary = json.loads(summary_json.read_text())
    assert (summary["valid"], summary["duplicates"], summary["per_label"]) == (
        2, {"seed": 1}, {"card_arrival": 1, "card_linking": 1, "exchange_rate": 0},
    )  # fmt: skip
    assert len(out.read_text().splitlines()) == 2
    assert "valid rows saved" in stdout and "duplicate: seed" in stdout and "card_linking" in stdout
    # The task description came from the file, and the teacher got the requested settings.
    body = teacher_server.log[0].body
    assert "Classify a bank customer's message into its intent." in body["messages"][1]["content"]
    assert (body["temperature"], body["max_tokens"]) == (0.8, 1024)
    assert "response_format" not in body  # only with --structured-output: not every teacher takes it


def test_generate_with_structured_output(monkeypatch, capsys, tmp_path, files, teacher_server):
    examples = [{"input": "My card never came.", "output": "card_arrival"},
                {"input": "Link a card to my account", "output": "card_linking"}]  # fmt: skip
    teacher_server.push(Answer(json.dumps({"examples": examples})))
    out = tmp_path / "out.jsonl"
    args = generate_args(teacher_server.url, files, out, "--per-request", "2", "--structured-output")
    code, _, _ = cli(monkeypatch, capsys, *args)
    assert code == 0 and len(out.read_text().splitlines()) == 2
    schema = teacher_server.log[0].body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["examples"]["maxItems"] == 2


def test_relabel_with_label_lines(monkeypatch, capsys, tmp_path, files, teacher_server):
    teacher_server.push(Answer("card_linking"))
    out = tmp_path / "out.jsonl"
    args = ["relabel", "--teacher-url", teacher_server.url, "--teacher-model", MODEL, "--in", files["inputs"],
            "--out", out, "--labels", files["labels_txt"], "--format", "flat"]  # fmt: skip
    code, stdout, _ = cli(monkeypatch, capsys, *args)
    assert code == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["input"], row["output"]) == ("How do I link my card?", "card_linking")
    assert teacher_server.log[0].body["temperature"] == 0.0


def test_teacher_failure_mid_run_is_one_error_line_and_resumable(
    monkeypatch, capsys, tmp_path, files, teacher_server
):
    teacher_server.push(Answer(json.dumps([{"input": "My card never came.", "output": "card_arrival"}])))
    out = tmp_path / "out.jsonl"
    args = generate_args(teacher_server.url, files, out, "--max-retries", "0", "--per-request", "1")
    code, _, err = cli(monkeypatch, capsys, *args)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: teacher failed after 1 attempts (last: HTTP 500")
    assert last.endswith(f"1 rows saved in {out}; re-run the same command to resume")


def test_used_up_budget_exits_1(monkeypatch, capsys, tmp_path, files, teacher_server):
    teacher_server.responder = lambda logged: Answer("nothing useful")
    args = generate_args(teacher_server.url, files, tmp_path / "o.jsonl", "--max-requests", "2")
    code, stdout, _ = cli(monkeypatch, capsys, *args)
    assert code == 1 and "request budget of 2 used up" in stdout


def without(args: list[str], option: str) -> list[str]:
    """`args` minus `option` and its value."""
    i = args.index(option)
    return args[:i] + args[i + 2 :]


# (extra arguments, files to write first, expected message); "{tmp}" stands for the test's tmp_path.
MISTAKES = [
    (["--labels", "{tmp}/nope.json"], {}, "labels file .*nope.json does not exist"),
    (["--labels", "{tmp}/bad.json"], {"bad.json": '["a",'}, "is not valid JSON"),
    (["--output-schema", "{tmp}/s.json"], {"s.json": '{"type": "x"}'}, "not a valid JSON Schema"),
    (["--labels", "{tmp}/labels.json", "--output-schema", "{tmp}/s.json"], {"s.json": "{}"}, "either --lab"),
    (["--seed-examples", "{tmp}/none.jsonl"], {}, "seed examples .*none.jsonl does not exist"),
    (["--labels", "{tmp}/labels.json", "--seed-examples", "{tmp}/sx.jsonl"],
     {"sx.jsonl": '{"input": "x", "output": "nope"}\n'}, r"line 1: invalid example \(not_in_labels\)"),
    (["--teacher-api-key-env", "LORAFORGE_TEST_UNSET_KEY"], {}, "LORAFORGE_TEST_UNSET_KEY .* not set"),
    (["--format", "xml"], {}, "--format must be 'chat' or 'flat'"),
    (["--task-description", "missing_task.md"], {}, "task description file .* does not exist"),
    (["--test-set", "{tmp}/ts.jsonl"], {"ts.jsonl": "{not json\n"}, "test set .*line 1: not valid"),
    (["--teacher-url", "localhost:8000"], {}, "must start with http"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "to_write", "message"), MISTAKES)
def test_user_mistakes_are_one_line_exit_2(
    monkeypatch, capsys, tmp_path, files, teacher_server, extra, to_write, message
):
    for name, content in to_write.items():
        (tmp_path / name).write_text(content)
    base = without(generate_args(teacher_server.url, files, tmp_path / "o.jsonl"), "--labels")
    code, _, err = cli(monkeypatch, capsys, *base, *[a.replace("{tmp}", str(tmp_path)) for a in extra])
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert re.search(message, err), err
    assert teacher_server.log == []  # nothing was asked of the teacher


def test_unreachable_teacher_is_one_line_exit_2(monkeypatch, capsys, tmp_path, files):
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, _, err = cli(monkeypatch, capsys, *generate_args(url, files, tmp_path / "o.jsonl"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: cannot reach the teacher at {url}")
    assert not (tmp_path / "o.jsonl").exists()


def test_relabel_missing_input_file(monkeypatch, capsys, tmp_path, teacher_server):
    args = ["relabel", "--teacher-url", teacher_server.url, "--teacher-model", MODEL,
            "--in", tmp_path / "nope.jsonl", "--out", tmp_path / "o.jsonl"]  # fmt: skip
    code, _, err = cli(monkeypatch, capsys, *args)
    assert code == 2 and err.strip() == f"error: input file {tmp_path / 'nope.jsonl'} does not exist"


def test_retry_then_success_through_the_cli(monkeypatch, capsys, tmp_path, files, teacher_server):
    teacher_server.push(
        Fail(429, {"Retry-After": "0"}),
        Answer(json.dumps([{"input": "My card never came.", "output": "card_arrival"},
                           {"input": "What is the euro rate today?", "output": "exchange_rate"}])),
    )  # fmt: skip
    summary_json = tmp_path / "s.json"
    args = generate_args(teacher_server.url, files, tmp_path / "o.jsonl")
    code, stdout, _ = cli(monkeypatch, capsys, *args, "--summary-json", summary_json)
    assert code == 0 and json.loads(summary_json.read_text())["retries"] == {"429": 1}
    assert "retried: 429" in stdout


def test_task_description_is_text_or_a_file(tmp_path):
    long_text = "Classify the message. " * 40  # longer than a file name may be
    assert resolve_description(long_text) == long_text.strip()
    assert resolve_description("Classify messages") == "Classify messages"
    path = tmp_path / "task.txt"
    path.write_text("  From a file.\n")
    assert resolve_description(str(path)) == "From a file."
