"""The switch on real parts: a `loraforge gateway` process between a `loraforge serve` of the base model
(standing in for the general API) and a `loraforge serve` hosting two adapters; routes changed with the
`loraforge route` CLI reach the running gateway; the official client is the caller."""

import signal
import subprocess
import time

import pytest
from openai import OpenAI

from loraforge.store import Store
from tests.gateway.servers import free_port, loraforge_cli, start_gateway_process
from tests.serve.api.conftest import start_server
from tests.serve.conftest import write_random_adapter


@pytest.fixture
def engines(tiny_model_dir, tmp_path):
    registry = tmp_path / "adapters"
    for i in range(2):
        write_random_adapter(tiny_model_dir, registry / f"ad{i:02d}", r=4, seed=3 + i)
    general = start_server(tiny_model_dir, None, api_key=None)
    specialist = start_server(tiny_model_dir, registry, api_key=None)
    yield general, specialist
    general.stop()
    specialist.stop()


def cli(*args: str) -> str:
    done = subprocess.run([*loraforge_cli(), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow  # three model servers, a gateway process and four CLI runs: ~90 s on 2 cores
def test_routes_switch_a_running_gateway_and_fallback_loses_no_call(engines, tmp_path):
    general, specialist = engines
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    port = free_port()
    gateway = start_gateway_process(
        [
            *("--upstream-url", general.url + "/v1", "--specialist-url", specialist.url + "/v1"),
            *("--store", store_url, "--spool", str(tmp_path / "spool.jsonl"), "--route-refresh", "0.2"),
        ],
        port,
    )
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=0, timeout=60)
    model = client.models.list().data[0].id  # the general model's own name

    def ask(user: str) -> tuple[str, str]:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": "where is my card?"}],
            max_tokens=3,
            temperature=0,
            user=user,
            extra_headers={"X-Loraforge-Task": "cards"},
        )
        raw.parse()
        return raw.headers["x-loraforge-served-by"], raw.headers["x-loraforge-call-id"]

    def wait_for(served_by: str) -> None:
        deadline = time.monotonic() + 10
        while ask("probe")[0] != served_by:
            assert time.monotonic() < deadline, f"the gateway never served by {served_by}"
            time.sleep(0.1)

    try:
        assert ask("u0")[0] == "general"
        cli("route", "set", "--task", "cards", "--adapter", "ad01", "--stage", "full", "--store", store_url)
        wait_for("adapter:ad01")
        cli("route", "set", "--task", "cards", "--adapter", "ad00", "--stage", "canary", "--percent", "50",
            "--store", store_url, "--reason", "canary")  # fmt: skip
        wait_for_canary = time.monotonic() + 10
        while True:
            sides = {u: ask(f"user-{u}")[0] for u in range(24)}
            if set(sides.values()) == {"general", "adapter:ad00"}:
                break
            assert time.monotonic() < wait_for_canary, sides
        cli("route", "set", "--task", "cards", "--adapter", "ad00", "--stage", "full", "--timeout-ms", "5000",
            "--store", store_url)  # fmt: skip
        wait_for("adapter:ad00")
        specialist.stop()  # the adapter server dies: every call falls back, none is lost
        answers = [ask(f"user-{u}") for u in range(8)]
        assert {served for served, _ in answers} == {"fallback"}
        cli("route", "rollback", "--task", "cards", "--store", store_url, "--reason", "adapter server down")
        deadline = time.monotonic() + 10
        while any(
            ask(f"user-{u}")[0] != ("fallback" if s == "adapter:ad00" else s) for u, s in sides.items()
        ):
            assert time.monotonic() < deadline, "rollback did not restore the canary"
            time.sleep(0.1)
        shown = cli("route", "show", "--task", "cards", "--store", store_url)
        assert "rollback" in shown and "adapter server down" in shown and "canary" in shown
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(20)
    store = Store(store_url)
    try:
        for _, call_id in answers:
            call = store.get_call(call_id)
            assert call.status == "ok" and call.served_by == "fallback"
            assert call.fallback_reason.startswith(("error: ", "timeout: "))
        assert all(c.status == "ok" for c in store.calls(task="cards"))
    finally:
        store.close()
