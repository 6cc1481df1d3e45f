"""`loraforge gateway` as users run it: mistakes exit 2 with one line; a real process serves and logs."""

import signal
import sys

import httpx
import pytest
from openai import OpenAI

from loraforge.cli.main import main
from loraforge.store import Store
from tests.gateway.servers import free_port, start_gateway_process


@pytest.mark.parametrize(
    "args, message",
    [
        (["--upstream-url", "ftp://example.com/v1"], "must start with http:// or https://"),
        (
            ["--upstream-url", "http://127.0.0.1:1/v1", "--upstream-api-key-env", "LF_NO_SUCH_VAR"],
            "LF_NO_SUCH_VAR",
        ),
        (["--upstream-url", "http://127.0.0.1:1/v1", "--store", "mysql://u@h/db"], "only sqlite"),
        (["--upstream-url", "http://127.0.0.1:1/v1", "--sqlite-sync", "sometimes"], "sync mode"),
        (
            ["--upstream-url", "http://127.0.0.1:1/v1", "--upstream-api-key-env", "LF_TEST_NEWLINE_KEY"],
            "contains a line break",
        ),
    ],
)
def test_gateway_user_mistakes_exit_2(monkeypatch, capsys, args, message):
    monkeypatch.setenv("LF_TEST_NEWLINE_KEY", "sk-key\n")
    monkeypatch.setattr(sys, "argv", ["loraforge", "gateway", *args])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_gateway_process_with_keys_serves_and_stops_cleanly(tmp_path, upstream):
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    port = free_port()
    proc = start_gateway_process(
        [
            "--upstream-url",
            upstream.url,
            "--store",
            store_url,
            "--api-key",
            "gw-key",
            "--upstream-api-key-env",
            "LF_TEST_UPSTREAM_KEY",
            "--spool",
            str(tmp_path / "spool.jsonl"),
        ],
        port,
        env={"LF_TEST_UPSTREAM_KEY": "up-key"},
    )
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="gw-key", max_retries=0, timeout=20)
        raw = client.chat.completions.with_raw_response.create(
            model="stub-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Loraforge-Task": "cli"},
        )
        assert raw.parse().choices[0].message.content == "echo: hi"
        assert upstream.headers[-1]["authorization"] == "Bearer up-key"
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status still says why.
        assert proc.wait(20) in (0, -signal.SIGTERM)
    store = Store(store_url)
    assert store.get_call(raw.headers["x-loraforge-call-id"]).task == "cli"
    store.close()


@pytest.fixture
def no_serving(monkeypatch):
    """uvicorn.run replaced: the checks before it run for real, nothing listens."""
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    return calls


def run_cli(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(
        sys, "argv", ["loraforge", "gateway", "--upstream-url", "http://127.0.0.1:1/v1", *args]
    )
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "gateway.example.com"])
def test_listening_beyond_loopback_without_a_key_is_refused(monkeypatch, capsys, no_serving, tmp_path, host):
    monkeypatch.setenv("LF_TEST_UP_KEY", "up-key")
    monkeypatch.setenv("LORAFORGE_HOME", str(tmp_path))
    monkeypatch.delenv("LORAFORGE_GATEWAY_API_KEY", raising=False)
    code = run_cli(monkeypatch, "--host", host, "--upstream-api-key-env", "LF_TEST_UP_KEY")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "--api-key" in err and "--insecure-no-api-key" in err and "upstream key" in err
    assert no_serving == []


def test_the_override_and_loopback_serve_but_warn_loudly(monkeypatch, capsys, no_serving, tmp_path):
    monkeypatch.setenv("LF_TEST_UP_KEY", "up-key")
    monkeypatch.setenv("LORAFORGE_HOME", str(tmp_path))
    monkeypatch.delenv("LORAFORGE_GATEWAY_API_KEY", raising=False)
    up = ("--upstream-api-key-env", "LF_TEST_UP_KEY", "--store", f"sqlite:///{tmp_path / 's.db'}")
    assert run_cli(monkeypatch, "--host", "0.0.0.0", "--insecure-no-api-key", *up) == 0
    assert "WARNING: no --api-key" in capsys.readouterr().err
    assert run_cli(monkeypatch, "--host", "127.0.0.1", *up) == 0
    assert "$LF_TEST_UP_KEY" in capsys.readouterr().err
    assert run_cli(monkeypatch, "--host", "0.0.0.0", "--api-key", "k", *up) == 0
    assert "WARNING" not in capsys.readouterr().err
    assert [c["host"] for c in no_serving] == ["0.0.0.0", "127.0.0.1", "0.0.0.0"]
