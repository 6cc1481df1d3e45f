"""The serving page reads a `loraforge serve` deployment's /metrics: gauges and per-model counts, and says
plainly when the deployment cannot be read."""

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from tests.gateway.servers import ThreadServer
from tests.ui.conftest import ui_client


def metrics_app() -> FastAPI:
    """Series named as `loraforge.serve.api.metrics` names them."""
    registry = CollectorRegistry()
    requests = Counter("loraforge_requests", "", ["model", "endpoint", "status"], registry=registry)
    tokens = Counter("loraforge_completion_tokens", "", ["model"], registry=registry)
    requests.labels("intent-v1", "chat.completions", "ok").inc(41)
    requests.labels("intent-v1", "chat.completions", "error").inc(2)
    requests.labels("smollm2-135m", "completions", "ok").inc(7)
    tokens.labels("intent-v1").inc(123)
    Gauge("loraforge_resident_adapters", "", registry=registry).set(3)
    Gauge("loraforge_tokens_per_second", "", registry=registry).set(512.5)
    app = FastAPI()
    app.get("/metrics")(lambda: PlainTextResponse(generate_latest(registry).decode()))
    return app


def test_serving_page_shows_the_deployment(seeded):
    with ThreadServer(metrics_app()) as server:
        page = ui_client(seeded, serve_url=f"{server.url}/v1").get("/serving").text
    assert "resident adapters</dt><dd>3" in page and "512.5" in page
    assert '<td>intent-v1</td><td class="num">41</td><td class="num">2</td>' in page
    assert '<td class="num">123</td>' in page and "smollm2-135m" in page


def test_serving_page_says_why_it_has_nothing(seeded):
    assert "--serve-url" in ui_client(seeded).get("/serving").text
    down = ui_client(seeded, serve_url="http://127.0.0.1:9/v1").get("/serving")
    assert down.status_code == 200 and "cannot read http://127.0.0.1:9/metrics" in down.text
