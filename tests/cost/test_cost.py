"""Cost and savings: the report's arithmetic, adapters priced by hardware (never zero, never a token price),
the throughput a `loraforge serve` reports in /metrics, and `loraforge report cost` as users run it."""

import json

import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from loraforge.cost.hardware import HardwarePrice, hardware_price
from loraforge.cost.prices import PriceTable
from loraforge.cost.report import cost_report
from loraforge.cost.throughput import Throughput, scrape_throughput
from loraforge.errors import ConfigError, LoraforgeError
from loraforge.serve.api.metrics import Metrics
from loraforge.store import Store
from tests.cli.test_errors import run_cli
from tests.gateway.servers import ThreadServer
from tests.store.calls import chat_call

HOUR = HardwarePrice("test-node", 3.6, "2026-01-01")  # $0.001 per second


def calls(task="intent"):
    """10 general calls at $0.001, 5 adapter calls, 2 fallbacks, 3 shadow answers, 1 failed adapter call."""
    records = []
    for i in range(10):
        r = chat_call(task, f"g{i}", "x", seq=i)
        r.update(served_by="general", cost_usd=0.001, latency_ms=100.0 + i, requested_model="gpt-4o-mini")
        records.append(r)
    for i in range(5):
        r = chat_call(task, f"a{i}", "x", seq=20 + i)
        # A served name that prefix-matches a general model's price must not be priced by it.
        r.update(served_by="adapter:ad1", served_model="gpt-4o-mini-lora", requested_model="gpt-4o-mini")
        r.update(prompt_tokens=100, completion_tokens=20, latency_ms=20.0, cost_usd=None)
        records.append(r)
    for i in range(2):
        r = chat_call(task, f"f{i}", "x", seq=30 + i)
        r.update(served_by="fallback", cost_usd=0.001, fallback_reason="error: down")
        records.append(r)
    for i in range(3):
        r = chat_call(task, f"g{i}", "x", seq=40 + i)
        r.update(served_by="adapter:ad1", shadow_of=records[i]["id"], prompt_tokens=100, completion_tokens=20)
        r["latency_ms"] = 20.0
        records.append(r)
    failed = chat_call(task, "e", "x", status="error", seq=50)
    failed.update(served_by="adapter:ad1")
    return [*records, failed]


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    s.insert_calls(calls())
    yield s
    s.close()


def test_report_prices_each_side_and_computes_the_savings(store):
    report = cost_report(store, PriceTable.load(), HOUR, Throughput(600.0, "given"), since="7d")
    task = report["tasks"]["intent"]
    by = task["by_who"]
    assert set(by) == {"general", "fallback", "adapter:ad1", "shadow adapter:ad1"}
    assert by["general"]["spend_usd"] == pytest.approx(0.010)
    assert by["fallback"]["spend_usd"] == pytest.approx(0.002)
    # 120 tokens at 600 tokens/s take 0.2 s of a $3.6/h machine: $0.0002 a call.
    adapter = by["adapter:ad1"]
    assert (adapter["calls"], adapter["ok"]) == (6, 5)
    assert adapter["spend_usd"] == pytest.approx(5 * 0.0002)
    assert adapter["general_would_cost_usd"] == pytest.approx(5 * 0.001)  # the task's mean general call
    assert by["shadow adapter:ad1"]["spend_usd"] == pytest.approx(3 * 0.0002)
    assert task["savings_usd"] == pytest.approx(0.005 - 0.001 - 0.0006)
    assert task["projected_monthly_savings_usd"] > task["savings_usd"]  # a day of traffic, times 30
    assert by["general"]["latency_p50_ms"] == pytest.approx(104.5)
    assert by["adapter:ad1"]["latency_p95_ms"] == pytest.approx(20.0)
    assert report["total"]["calls"] == 18  # shadow answers are not calls of the clients


def test_adapters_are_never_priced_at_zero_or_by_the_general_models_tokens(store):
    report = cost_report(store, PriceTable.load(), HOUR, None, since="7d")
    adapter = report["tasks"]["intent"]["by_who"]["adapter:ad1"]
    # Without a measured throughput the logged adapter calls give one (tokens / latency: 120 / 0.02 s).
    assert report["throughput"]["tokens_per_s"] == pytest.approx(6000)
    assert adapter["spend_usd"] == pytest.approx(5 * 120 / 6000 * 0.001)
    token_price = PriceTable.load().estimate("gpt-4o-mini", 100, 20) * 5
    assert adapter["spend_usd"] > 0 and adapter["spend_usd"] != pytest.approx(token_price)


def test_no_throughput_leaves_adapter_calls_unpriced_not_free(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    r = chat_call("t", "q", "a")
    r.update(served_by="adapter:ad1", latency_ms=None)
    s.insert_calls([r])
    task = cost_report(s, PriceTable.load(), HOUR, None)["tasks"]["t"]
    row = task["by_who"]["adapter:ad1"]
    assert (row["spend_usd"], row["unpriced_calls"]) == (0.0, 1)
    # Nor can savings be told when the general model it replaces has no price: unknown, not a number.
    assert task["savings_usd"] is None and task["counterfactual"].startswith("unknown")
    s.close()


def test_the_default_hardware_price_is_dated_and_a_given_one_wins(tmp_path):
    shipped = hardware_price()
    assert shipped.per_hour > 0 and shipped.taken and shipped.name == "aws-g5.xlarge"
    assert hardware_price(2.5).per_hour == 2.5
    assert hardware_price(node="aws-c7i.2xlarge").per_hour < shipped.per_hour
    with pytest.raises(ConfigError, match="no hardware price for 'tpu'"):
        hardware_price(node="tpu")
    user = tmp_path / "prices.yaml"
    user.write_text("hardware:\n  default: mine\n  taken: '2026-02-02'\n  nodes:\n    mine: {per_hour: 9}\n")
    assert hardware_price(user_file=user) == HardwarePrice("mine", 9.0, "2026-02-02", "")


def test_serve_metrics_report_tokens_per_busy_second_and_the_report_reads_them():
    from tests.serve.api.test_metrics import engine_stub

    metrics = Metrics(engine_stub())
    metrics.observe("m", "chat", "ok", 100, 100, started=10.0, first_token=10.5, ended=12.0)
    metrics.observe("m", "chat", "ok", 50, 50, started=11.0, first_token=11.5, ended=13.0)  # overlaps
    metrics.observe("m", "chat", "ok", 0, 0, started=20.0, first_token=None, ended=20.0)
    app = FastAPI()
    app.get("/metrics")(lambda: PlainTextResponse(metrics.render()))
    with ThreadServer(app) as server:
        measured = scrape_throughput(f"{server.url}/v1")
    assert measured.tokens_per_s == pytest.approx(300 / 3.0)  # busy 10..13 s, not 2 + 2 s
    with pytest.raises(LoraforgeError, match="cannot read"):
        scrape_throughput("http://127.0.0.1:9/v1", timeout_s=1)


def run(monkeypatch, capsys, *args):
    return run_cli(monkeypatch, capsys, "report", *args)


def test_report_cost_cli(monkeypatch, capsys, store):
    url = ["--store", store.url]
    code, out, err = run(monkeypatch, capsys, "cost", "--task", "intent", "--tokens-per-second", "600",
                         "--hardware-hour-price", "3.6", "--json", *url)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["tasks"]["intent"]["savings_usd"] == pytest.approx(0.0034)
    code, out, _ = run(monkeypatch, capsys, "cost", "--since", "7d", "--tokens-per-second", "600",
                       "--hardware-hour-price", "3.6", *url)  # fmt: skip
    assert code == 0 and "adapter:ad1" in out and "saved $0.003400" in out and "/month" in out
    code, _, err = run(monkeypatch, capsys, "cost", "--since", "last week", *url)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    code, _, err = run(monkeypatch, capsys, "cost", "--hardware-hour-price", "-1", *url)
    assert code == 2 and "must be positive" in err
