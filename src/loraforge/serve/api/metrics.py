"""Prometheus metrics of the server, in a registry of its own (one per app, so tests can run several)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from loraforge.openai_compat import CappedLabels, render_metrics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


OTHER_MODELS = "other"  # the label of every model name past the bound


class Metrics:
    """The server's Prometheus series; gauges read the engine (an AsyncEngine) when scraped."""

    def __init__(self, engine, max_models: int = 512):
        self.max_models = max_models
        self._labels = CappedLabels(max_models, OTHER_MODELS)
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "loraforge_requests", "Finished requests", ["model", "endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "loraforge_prompt_tokens", "Prompt tokens of requests", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "loraforge_completion_tokens", "Generated tokens", ["model"], registry=r
        )
        self.ttft = Histogram(
            "loraforge_time_to_first_token_seconds",
            "Time to first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "loraforge_time_per_output_token_seconds",
            "Time between output tokens (mean per request)",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "loraforge_request_duration_seconds",
            "End-to-end request time",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("loraforge_queue_depth", "Requests waiting to start", registry=r)
        self.queue_depth.set_function(engine.num_waiting)
        self.running = Gauge("loraforge_running_requests", "Requests in the running batch", registry=r)
        self.running.set_function(engine.num_running)
        self.resident = Gauge("loraforge_resident_adapters", "Adapters loaded in memory", registry=r)
        self.resident.set_function(engine.num_resident_adapters)
        self.preemptions = Gauge("loraforge_preemptions", "Sequences preempted so far", registry=r)
        self.preemptions.set_function(engine.num_preemptions)
        r.register(PrefixCacheCollector(engine.blocks))
        # Throughput actually achieved, for pricing an adapter's calls by the hardware (`report cost`):
        # tokens (prompt + generated) per second of wall time with at least one request in flight.
        self.busy = Counter(
            "loraforge_busy_seconds", "Wall time with at least one request in flight", registry=r
        )
        self.tokens_per_second = Gauge(
            "loraforge_tokens_per_second",
            "Prompt and generated tokens per busy second, since the server started",
            registry=r,
        )
        self.tokens_per_second.set_function(self._tokens_per_second)
        self._busy_until = 0.0
        self._busy_s = 0.0
        self._tokens = 0

    def label(self, model: str, local: bool) -> str:
        """The `model` label of a request: the base model and the operator's adapters always have their
        own; a client-chosen name (a hub id) only while fewer than `max_models` names have one, so that
        clients cannot grow the number of series without bound."""
        return self._labels(model, always=local)

    def observe(
        self,
        model: str,
        endpoint: str,
        status: str,
        prompt: int,
        completion: int,
        started: float,
        first_token: float | None,
        ended: float,
    ) -> None:
        self.requests.labels(model, endpoint, status).inc()
        # Requests are observed as they end, so `ended` never decreases: the union of their intervals
        # grows by the part of this one after the last end seen.
        busy = max(0.0, ended - max(started, self._busy_until))
        self._busy_until = max(self._busy_until, ended)
        self._busy_s += busy
        self._tokens += prompt + completion
        self.busy.inc(busy)
        self.prompt_tokens.labels(model).inc(prompt)
        self.completion_tokens.labels(model).inc(completion)
        self.latency.labels(model).observe(ended - started)
        if first_token is not None:
            self.ttft.labels(model).observe(first_token - started)
            if completion > 1:
                self.tpot.labels(model).observe((ended - first_token) / (completion - 1))

    def _tokens_per_second(self) -> float:
        return self._tokens / self._busy_s if self._busy_s > 0 else 0.0

    def render(self) -> bytes:
        """The series in Prometheus' text format (openai_compat.METRICS_CONTENT_TYPE)."""
        return render_metrics(self.registry)


class PrefixCacheCollector(Collector):
    """The prefix cache's counters (serve/engine/block_manager.py), read when scraped: lookups and hits in
    tokens and in blocks, the hit rate since start, blocks held and evicted."""

    def __init__(self, blocks):
        self.blocks = blocks  # the engine's BlockManager

    def collect(self):
        st, units = self.blocks.stats, ("tokens", "blocks")
        pairs = {"tokens": (st.hit_tokens, st.queried_tokens), "blocks": (st.hit_blocks, st.queried_blocks)}
        queries = CounterMetricFamily(
            "loraforge_prefix_cache_queries",
            "Prompt tokens/blocks looked up in the prefix cache",
            labels=["unit"],
        )
        hits = CounterMetricFamily(
            "loraforge_prefix_cache_hits", "Prompt tokens/blocks found in the prefix cache", labels=["unit"]
        )
        rate = GaugeMetricFamily(
            "loraforge_prefix_cache_hit_rate", "Hits / queries since the server started", labels=["unit"]
        )
        for unit in units:
            hit, queried = pairs[unit]
            queries.add_metric([unit], queried)
            hits.add_metric([unit], hit)
            rate.add_metric([unit], hit / queried if queried else 0.0)
        held = GaugeMetricFamily("loraforge_prefix_cache_blocks", "KV blocks holding cached prefixes")
        held.add_metric([], self.blocks.num_cached_blocks)
        evicted = CounterMetricFamily("loraforge_prefix_cache_evicted_blocks", "Cached blocks evicted")
        evicted.add_metric([], st.evicted_blocks)
        yield from (queries, hits, rate, held, evicted)
