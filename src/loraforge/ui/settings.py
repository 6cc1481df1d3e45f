"""Settings of the dashboard, and every limit and default it uses (each named once, here)."""

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from loraforge.flywheel.plan import FEWSHOT_MIN_EXAMPLES, FINETUNE_MIN_EXAMPLES, GOOD_SCORE  # noqa: F401

DEFAULT_PORT = 8500
PAGE_SIZE = 50  # calls, dataset rows, disagreements per page
MAX_PAGE_SIZE = 200
WINDOW_DAYS = 30  # the tasks page's charts and totals cover this many days back
MAX_WINDOW_DAYS = 365
MAX_SEARCH_CHARS = 200  # a text search longer than this is refused (it would only be slower)
MAX_FILE_BYTES = 2 * 1024 * 1024  # a run's README/config/eval file larger than this is shown truncated
MAX_METRIC_ROWS = 20_000  # metrics.jsonl lines read for the curves (a run logs far fewer)
MAX_LABELS_SHOWN = 50  # label counts of a dataset beyond this are summed as "(other)"
MAX_DIFF_ROWS = 500  # rows listed per side of a dataset diff
RUN_POLL_S = 3  # a running training's page refreshes its progress this often
# Sums of completed days on the tasks page are re-read this often (a late spool replay or a prune shows
# within it); today's calls are read on every load.
ROLLUP_CACHE_S = 300
DATA_CACHE_S = 30  # the tasks page's counts of feedback and corrections are at most this old
SERVE_SCRAPE_TIMEOUT_S = 3.0
# Adapter calls recent enough to estimate tokens/s from (when no --serve-url gauge is available).
THROUGHPUT_SAMPLE_CALLS = 2000
SESSION_COOKIE = "loraforge_ui"
# What "enough data" means on the tasks page: `loraforge plan`'s marks (good examples: scored at least
# GOOD_SCORE, or corrected); the plan itself decides on held-out comparisons.
# (FEWSHOT_MIN_EXAMPLES, FINETUNE_MIN_EXAMPLES, GOOD_SCORE, imported above)


@dataclass
class UISettings:
    store_url: str | None = None
    api_key: str | None = None  # required from browsers and clients when set
    runs_dir: Path = Path("runs")  # training run directories (each holds metrics.jsonl, eval.json, ...)
    serve_url: str | None = None  # a `loraforge serve` base URL whose /metrics the serving page shows
    serve_api_key: str | None = None  # sent to it as a Bearer token
    window_days: int = WINDOW_DAYS
    warm: bool = False  # compute the tasks page once at start, in the background (servers; not tests)
    # Form posts carry this token, so another site cannot make a browser change a route or post feedback.
    csrf_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
