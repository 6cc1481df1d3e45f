"""Graceful shutdown finishes in-flight streams; the CLI turns a user mistake into one line and exit 2."""

import json
import sys
import threading
import time

import httpx
import pytest

from tests.serve.api.conftest import start_server


def test_shutdown_finishes_in_flight_streams(tiny_model_dir):
    srv = start_server(tiny_model_dir, None, api_key=None)
    body = {
        "model": srv.engine.model_name,
        "prompt": "The quick",
        "max_tokens": 150,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    chunks, first = [], threading.Event()

    def consume():
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    chunks.append(line[6:])
                    first.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first.wait(30)
    srv.server.should_exit = True  # what SIGTERM/SIGINT do in uvicorn
    reader.join(timeout=60)
    srv.thread.join(timeout=60)
    assert chunks[-1] == "[DONE]"
    last = json.loads(chunks[-2])
    assert last["choices"][0]["finish_reason"] == "length"
    assert not srv.thread.is_alive()


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--adapter-dir", "{tmp}/nope"], "--adapter-dir"), (["--adapter", "no-equals-sign"], "--adapter")],
)
def test_serve_cli_rejects_user_mistakes_in_one_line(monkeypatch, capsys, tmp_path, args, needle):
    from loraforge.cli.main import main

    argv = ["loraforge", "serve", *(a.format(tmp=tmp_path) for a in args)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "\n" not in err


def test_serve_cli_starts_a_server(tiny_model_dir, tmp_path):
    import subprocess

    from tests.serve.api.conftest import free_port

    port = free_port()
    args = [
        "serve",
        "--model",
        str(tiny_model_dir),
        "--port",
        str(port),
        "--precision",
        "fp32",
        "--api-key",
        "k",
    ]
    code = "from loraforge.cli.main import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer k"})
                break
            except httpx.ConnectError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.2)
        assert r.status_code == 200
        assert [m["id"] for m in r.json()["data"]] == [tiny_model_dir.name, "extra"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
