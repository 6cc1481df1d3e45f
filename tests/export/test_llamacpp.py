"""llama.cpp's programs built from the llama-cpp-python sdist: `llama-server` and `llama-bench` (for
benchmarks/vs_llamacpp.py) build, and llama-server answers a request for a base model we exported, with a
GGUF LoRA we exported applied per request (the `lora` field the benchmark sends)."""

import socket
import subprocess
import time

import httpx
import pytest

from loraforge.export.gguf import export_base_gguf, export_gguf
from tests.export.test_gguf import PROMPT, _reference

pytestmark = pytest.mark.slow  # builds llama-server and llama-bench on a machine's first run (minutes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_llama_server_answers_with_a_per_request_lora(run_dir, tmp_path):
    from loraforge.export.llamacpp import tools

    run, base = run_dir
    server_bin, bench_bin = tools("llama-server", "llama-bench")
    assert bench_bin.is_file()
    model = export_base_gguf(str(base), tmp_path / "base.gguf")
    lora = export_gguf(run, tmp_path / "lora.gguf", base_model=str(base), lora_only=True)
    port = _free_port()
    command = [server_bin, "-m", model, "--port", port, "-t", 1, "--parallel", 2, "-c", 512, "--no-webui"]
    command += ["--lora", lora, "--lora-init-without-apply"]
    proc = subprocess.Popen([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        body = {"prompt": [1, 2, 3, 4], "max_tokens": 4, "temperature": 0, "ignore_eos": True}
        for scale in (0.0, 1.0):
            reply = httpx.post(f"{url}/v1/completions", json=body | {"lora": [{"id": 0, "scale": scale}]})
            assert reply.status_code == 200, reply.text
            assert reply.json()["usage"]["completion_tokens"] == 4
        # With the adapter applied per request, llama.cpp continues PROMPT as PEFT does (f32, greedy).
        body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "lora": [{"id": 0, "scale": 1.0}]}
        reply = httpx.post(f"{url}/v1/completions", json=body)
        expected = _reference(run, base, 8)
        assert expected and reply.json()["choices"][0]["text"] == expected
        adapters = httpx.get(f"{url}/lora-adapters").json()
        assert [a["id"] for a in adapters] == [0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
