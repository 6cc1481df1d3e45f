"""The tokens/s a `loraforge serve` deployment actually achieved, read from its Prometheus /metrics."""

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loraforge.errors import LoraforgeError

TOKENS_PER_SECOND_METRIC = "loraforge_tokens_per_second"


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float
    source: str  # where the figure comes from, for the report


def metrics_url(base_url: str) -> str:
    """http://host:port/v1 -> http://host:port/metrics (the server's metrics sit beside its API)."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return urlunsplit((parts.scheme, parts.netloc, f"{path}/metrics", "", ""))


def scrape_throughput(
    base_url: str, api_key: str | None = None, timeout_s: float = 10.0
) -> Throughput | None:
    """The deployment's measured tokens/s, or None when it has not served a token yet."""
    url = metrics_url(base_url)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise LoraforgeError(f"cannot read the specialist's metrics at {url}: {exc}") from exc
    if resp.status_code != 200:
        raise LoraforgeError(f"the specialist's metrics at {url} answered HTTP {resp.status_code}")
    for family in text_string_to_metric_families(resp.text):
        if family.name == TOKENS_PER_SECOND_METRIC:
            value = sum(sample.value for sample in family.samples)
            return Throughput(value, f"measured by the deployment ({url})") if value > 0 else None
    raise LoraforgeError(f"{url} reports no {TOKENS_PER_SECOND_METRIC}: is it a `loraforge serve`?")


def throughput_from_calls(tokens: int, latency_s: float) -> Throughput | None:
    """Tokens per second of logged calls, one at a time (a floor: batching only raises it)."""
    if tokens <= 0 or latency_s <= 0:
        return None
    return Throughput(tokens / latency_s, "logged adapter calls (tokens / latency, without batching)")
