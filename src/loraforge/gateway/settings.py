"""Settings of one gateway process."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from loraforge.paths import loraforge_home
from loraforge.store.database import resolve_store_url


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
    specialist_url: str | None = None  # OpenAI base URL of the server hosting adapters (`loraforge serve`)
    specialist_api_key: str | None = None
    route_refresh_s: float = 2.0  # how often routes are re-read from the store
    shadow_concurrency: int = 8  # shadow requests in flight at most; more are dropped, not queued

    def resolved_store_url(self) -> str:
        return resolve_store_url(self.store_url)

    def resolved_spool_path(self) -> Path:
        """One spool per store, so a restarted gateway replays what its predecessor spooled."""
        if self.spool_path is not None:
            return self.spool_path
        digest = hashlib.sha256(self.resolved_store_url().encode()).hexdigest()[:12]
        return loraforge_home() / "spool" / f"calls-{digest}.jsonl"
