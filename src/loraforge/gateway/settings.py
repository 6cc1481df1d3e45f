"""Settings of one gateway process, and the limits it enforces (each named once, here)."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from loraforge.fewshot.settings import DEFAULT_REFRESH_S
from loraforge.paths import loraforge_home
from loraforge.store.database import resolve_store_url
from loraforge.store.recorder import MAX_QUEUED_RECORDS, RECORD_TIMEOUT_S

# A request body larger than this is refused with 413 before it is read whole. Generous: chat bodies with
# base64 images or long documents are legitimate; the point is that no client can exhaust the memory.
MAX_BODY_BYTES = 32 * 1024 * 1024
# JSON nested deeper than this is refused with 400 (OpenAI tool schemas stay far below it); without a bound,
# a body of a few kilobytes of `[` crashed the parser (RecursionError) and left the client without an answer.
MAX_JSON_DEPTH = 64
# Distinct task names that get their own Prometheus series; the task is chosen by clients, so later names
# share the series labelled OTHER_TASK_LABEL instead of growing the registry without bound.
MAX_TASK_LABELS = 100

# The upstream client (gateway.upstream). Idle connections older than IDLE_EXPIRY_S are closed rather than
# reused: under the 5 s keep-alive timeout of uvicorn (`loraforge serve`) and most servers, so a server does
# not close one just as a request is written to it (a POST that may have arrived is never resent).
IDLE_EXPIRY_S = 4.0
MAX_RESPONSE_HEAD_BYTES = 64 * 1024  # status line and headers
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # a non-streamed response (held, then stored whole)
MAX_RESPONSE_LINE_BYTES = 16 * 1024 * 1024  # one line of a stream (an SSE event); beyond: a broken upstream


@dataclass
class GatewaySettings:
    upstream_url: str  # the upstream's OpenAI base URL, e.g. https://api.openai.com/v1
    upstream_api_key: str | None = None  # sent upstream as a Bearer token
    api_key: str | None = None  # required from the gateway's own clients when set
    store_url: str | None = None
    spool_path: Path | None = None
    prices_file: Path | None = None
    timeout_s: float = 600.0  # per upstream request (read timeout between bytes of a stream)
    connect_timeout_s: float = 10.0
    store_busy_timeout_s: float = 5.0
    sqlite_sync: str = "full"  # "normal": crash-safe but not power-loss-safe commits, far fewer fsyncs
    retry_interval_s: float = 2.0  # how often a down store is retried
    max_body_bytes: int = MAX_BODY_BYTES
    max_json_depth: int = MAX_JSON_DEPTH
    max_task_labels: int = MAX_TASK_LABELS
    # Longest a request waits for its call to be committed before it is spooled instead (a hung database
    # must not hang the gateway); also the bound on PostgreSQL statements (statement_timeout).
    record_timeout_s: float = RECORD_TIMEOUT_S
    max_queued_records: int = MAX_QUEUED_RECORDS  # waiting for the store's writer; beyond it: spooled
    specialist_url: str | None = None  # OpenAI base URL of the server hosting adapters (`loraforge serve`)
    specialist_api_key: str | None = None
    route_refresh_s: float = 2.0  # how often routes are re-read from the store
    shadow_concurrency: int = 8  # shadow requests in flight at most; more are dropped, not queued
    fewshot_refresh_s: float = DEFAULT_REFRESH_S  # how often few-shot tasks' good examples are re-read
    ui: bool = False  # mount the dashboard (`loraforge ui`) at /ui, behind the same API key
    ui_runs_dir: Path = Path("runs")  # the dashboard's training runs

    def resolved_store_url(self) -> str:
        return resolve_store_url(self.store_url)

    def resolved_spool_path(self) -> Path:
        """One spool per store, so a restarted gateway replays what its predecessor spooled."""
        if self.spool_path is not None:
            return self.spool_path
        digest = hashlib.sha256(self.resolved_store_url().encode()).hexdigest()[:12]
        return loraforge_home() / "spool" / f"calls-{digest}.jsonl"
