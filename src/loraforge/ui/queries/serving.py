"""The serving page's figures: a `loraforge serve` deployment's Prometheus /metrics, parsed."""

from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loraforge.cost.throughput import metrics_url
from loraforge.ui.settings import SERVE_SCRAPE_TIMEOUT_S

GAUGES = {
    "loraforge_resident_adapters": "resident adapters",
    "loraforge_tokens_per_second": "tokens/s (busy time)",
    "loraforge_queue_depth": "waiting requests",
    "loraforge_running_requests": "running requests",
    "loraforge_preemptions": "preemptions",
}


@dataclass
class ServingView:
    url: str
    gauges: dict[str, float] = field(default_factory=dict)
    # model -> {"ok": n, "error": n, "prompt_tokens": n, "completion_tokens": n}
    models: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None


def scrape(base_url: str, api_key: str | None = None) -> ServingView:
    url = metrics_url(base_url)
    view = ServingView(url)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(url, headers=headers, timeout=SERVE_SCRAPE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        view.error = f"cannot read {url}: {exc}"
        return view
    if resp.status_code != 200:
        view.error = f"{url} answered HTTP {resp.status_code}"
        return view
    models: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    try:
        for family in text_string_to_metric_families(resp.text):
            for sample in family.samples:
                if sample.name in GAUGES:
                    view.gauges[GAUGES[sample.name]] = sample.value
                elif sample.name == "loraforge_requests_total":
                    models[sample.labels.get("model", "?")][sample.labels.get("status", "?")] += sample.value
                elif sample.name in ("loraforge_prompt_tokens_total", "loraforge_completion_tokens_total"):
                    key = sample.name.removeprefix("loraforge_").removesuffix("_total")
                    models[sample.labels.get("model", "?")][key] += sample.value
    except ValueError as exc:
        view.error = f"{url} is not Prometheus text: {exc}"
        return view
    if not view.gauges and not models:
        view.error = f"{url} has no loraforge series: is it a `loraforge serve`?"
    view.models = {m: dict(v) for m, v in sorted(models.items())}
    return view
