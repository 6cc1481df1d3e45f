"""Graceful shutdown finishes in-flight streams; the CLI turns a user mistake into one line and exit 2."""

import json
import sys
import threading
import time

import httpx
import pytest

from tests.serve.api.conftest import start_server, stream_in_background


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
    reader, chunks = stream_in_background(srv.url, body)
    srv.server.should_exit = True  # what SIGTERM/SIGINT do in uvicorn
    reader.join(timeout=60)
    srv.thread.join(timeout=60)
    assert chunks[-1] == "[DONE]"
    last = json.loads(chunks[-2])
    assert last["choices"][0]["finish_reason"] == "length"
    assert not srv.thread.is_alive()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--adapter-dir", "{tmp}/nope"], "--adapter-dir"),
        (["--adapter", "no-equals-sign"], "--adapter"),
        (["--adapter-root", "{tmp}/nope"], "--adapter-root"),
        (["--weights", "int3"], "--weights"),
        (["--weights", "fp32", "--precision", "bf16"], "--weights"),
    ],
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
    import re
    import subprocess

    from tests.serve.conftest import write_random_adapter

    extra = write_random_adapter(tiny_model_dir, tmp_path / "extra-adapter", r=2)
    args = ["serve", "--model", str(tiny_model_dir), "--port", "0", "--precision", "fp32", "--api-key", "k"]
    args += ["--adapter", f"extra={extra}", "--admin-api-key", "adm", "--max-stop-sequences", "2"]
    code = "from loraforge.cli.main import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline, url = time.monotonic() + 180, None  # a first start on a machine may build the kernels
        while url is None:
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            found = [m for line in list(lines) if (m := re.search(r"Uvicorn running on (http://\S+)", line))]
            url = found[0].group(1) if found else None
            time.sleep(0.1)
        r = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer k"})
        assert r.status_code == 200
        assert [m["id"] for m in r.json()["data"]] == [tiny_model_dir.name, "extra"]
        assert httpx.get(f"{url}/v1/models").status_code == 401
        # The limit flags reach the server, and the admin key guards the adapter routes.
        body = {"model": tiny_model_dir.name, "prompt": "x", "max_tokens": 1, "stop": ["a", "b", "c"]}
        r = httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": "Bearer k"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
        r = httpx.delete(f"{url}/v1/adapters/extra", headers={"Authorization": "Bearer k"})
        assert r.status_code == 401
        r = httpx.delete(f"{url}/v1/adapters/extra", headers={"Authorization": "Bearer adm"})
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
