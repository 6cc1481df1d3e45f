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
