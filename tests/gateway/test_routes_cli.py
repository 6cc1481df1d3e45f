"""`loraforge route` as users run it: changes and history; mistakes exit 2 with one line."""

import json

import pytest

from tests.cli.test_errors import run_cli


def run(monkeypatch, capsys, *args):
    return run_cli(monkeypatch, capsys, "route", *args)


def test_set_show_rollback_off(monkeypatch, capsys, tmp_path):
    store = ["--store", f"sqlite:///{tmp_path / 'store.db'}"]
    labels = tmp_path / "labels.txt"
    labels.write_text("card_arrival\nlost_card\n")
    code, out, _ = run(
        monkeypatch, capsys, "set", "--task", "t", "--adapter", "ad1", "--stage", "shadow",
        "--labels", str(labels), "--by", "ana", "--reason", "first", *store,
    )  # fmt: skip
    assert code == 0 and "route #1 shadow -> adapter:ad1 [classification]" in out
    code, out, _ = run(
        monkeypatch, capsys, "set", "--task", "t", "--adapter", "ad1", "--stage", "canary", "--percent", "10",
        "--fallback", "on-error", "--timeout-ms", "800", *store,
    )  # fmt: skip
    assert code == 0 and "canary -> adapter:ad1 (10%)" in out
    code, out, _ = run(monkeypatch, capsys, "show", "--task", "t", "--json", *store)
    history = json.loads(out)
    assert [(h["seq"], h["stage"], h["actor"]) for h in history][0] == (1, "shadow", "ana")
    assert history[1]["fallback"] == ["on-error"] and history[1]["timeout_ms"] == 800
    assert history[1]["output"]["kind"] == "text"
    assert run(monkeypatch, capsys, "rollback", "--task", "t", *store)[0] == 0
    code, out, _ = run(monkeypatch, capsys, "show", "--json", *store)
    (current,) = json.loads(out)
    assert (current["stage"], current["action"], current["output"]["labels"]) == (
        "shadow",
        "rollback",
        ["card_arrival", "lost_card"],
    )
    code, out, _ = run(monkeypatch, capsys, "off", "--task", "t", *store)
    assert code == 0 and "off" in out


def test_fewshot_route_keeps_its_options_and_rollback_restores_them(monkeypatch, capsys, tmp_path):
    store = ["--store", f"sqlite:///{tmp_path / 'store.db'}"]
    code, out, _ = run(
        monkeypatch, capsys, "set", "--task", "t", "--stage", "fewshot", "--model", "base", "--k", "4",
        "--min-score", "0.8", *store,
    )  # fmt: skip
    assert code == 0 and "route #1 fewshot -> base with k=4 examples (corrected or scored >= 0.8)" in out
    code, out, _ = run(monkeypatch, capsys, "set", "--task", "t", "--stage", "fewshot", *store)
    assert code == 0 and "fewshot -> general with k=8 examples" in out
    assert run(monkeypatch, capsys, "rollback", "--task", "t", *store)[0] == 0
    code, out, _ = run(monkeypatch, capsys, "show", "--json", *store)
    (current,) = json.loads(out)
    assert (current["stage"], current["adapter"]) == ("fewshot", None)
    assert current["options"] == {"model": "base", "k": 4, "min_score": 0.8}


@pytest.mark.parametrize(
    "args, message",
    [
        (["set", "--task", "t", "--adapter", "a", "--stage", "canary"], "--percent is required"),
        (
            ["set", "--task", "t", "--adapter", "a", "--stage", "full", "--labels", "/no/such"],
            "does not exist",
        ),
        (["set", "--task", "t", "--adapter", "a", "--stage", "full", "--kind", "classification"], "--labels"),
        (
            ["set", "--task", "t", "--adapter", "a", "--stage", "full", "--fallback", "sometimes"],
            "--fallback",
        ),
        (["set", "--task", "t", "--stage", "full"], "--adapter is required for stage 'full'"),
        (["set", "--task", "t", "--adapter", "a", "--stage", "fewshot"], "--adapter does not apply"),
        (["set", "--task", "t", "--stage", "fewshot", "--k", "0"], "--k must be between 1 and 64"),
        (["set", "--task", "t", "--stage", "fewshot", "--k", "65"], "--k must be between 1 and 64"),
        (["set", "--task", "t", "--stage", "fewshot", "--model", "bad name"], "not a valid model name"),
        (
            ["set", "--task", "t", "--stage", "fewshot", "--min-score", "nan"],
            "--min-score must be a finite number",
        ),
        (["set", "--task", "t", "--stage", "fewshot", "--percent", "5"], "--percent applies to a canary"),
        (
            ["set", "--task", "t", "--adapter", "a", "--stage", "full", "--k", "3"],
            "--k applies to stage fewshot",
        ),
        (["rollback", "--task", "t"], "no route history"),
        (["off", "--task", "t"], "no route to turn off"),
        (["show", "--task", "t"], "never been routed"),
    ],
)
def test_route_mistakes_exit_2_with_one_line(monkeypatch, capsys, tmp_path, args, message):
    code, _, err = run(monkeypatch, capsys, *args, "--store", f"sqlite:///{tmp_path / 'store.db'}")
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--specialist-url", "ftp://h/v1"], "--specialist-url 'ftp://h/v1' must start with http"),
        (["--specialist-url", "http://h/v1", "--specialist-api-key-env", "LF_NO_SUCH_VAR"], "LF_NO_SUCH_VAR"),
    ],
)
def test_gateway_specialist_mistakes_exit_2(monkeypatch, capsys, args, message):
    code, _, err = run_cli(monkeypatch, capsys, "gateway", "--upstream-url", "http://127.0.0.1:1/v1", *args)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
