"""Prometheus metrics of one gateway (own registry, so several gateways can live in one process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loraforge.gateway.settings import MAX_TASK_LABELS
from loraforge.openai_compat import CappedLabels

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


OTHER_TASK_LABEL = "(other)"  # the series shared by tasks beyond the first `max_task_labels`


class GatewayMetrics:
    def __init__(self, max_task_labels: int = MAX_TASK_LABELS) -> None:
        self.max_task_labels = max_task_labels
        # task_label(task): `task` while fewer than `max_task_labels` distinct tasks were seen, else
        # OTHER_TASK_LABEL
        self.task_label = CappedLabels(max_task_labels, OTHER_TASK_LABEL)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "loraforge_gateway_requests",
            "Proxied requests by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "loraforge_gateway_request_seconds",
            "Time to the complete response, recording included.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "loraforge_gateway_upstream_seconds",
            "Time the upstream took.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "loraforge_gateway_tokens", "Tokens of successful calls.", ["task", "kind"], registry=r
        )
        self.cost = Counter("loraforge_gateway_cost_usd", "Estimated cost of calls.", ["task"], registry=r)
        self.recorded = Counter(
            "loraforge_gateway_recorded_calls",
            "Calls recorded, by where they went (store, spool, failed).",
            ["outcome"],
            registry=r,
        )
        self.record_batch_seconds = Histogram(
            "loraforge_gateway_record_batch_seconds",
            "Time to durably write one group-commit batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_healthy = Gauge(
            "loraforge_gateway_store_healthy",
            "1 when calls go to the store, 0 while they are spooled.",
            registry=r,
        )

    def on_batch(self, outcome: str, size: int, seconds: float) -> None:
        self.recorded.labels(outcome).inc(size)
        self.record_batch_seconds.observe(seconds)
        self.store_healthy.set(1 if outcome == "store" else 0)
