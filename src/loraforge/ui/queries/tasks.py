"""The tasks page: per task, calls per day by who answered, spend and savings, route, verdict, data."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from loraforge.cost.hardware import HardwarePrice, adapter_call_cost
from loraforge.cost.throughput import Throughput, throughput_from_calls
from loraforge.store.routes import current_routes
from loraforge.store.store import Store
from loraforge.store.tables import Call, Comparison, Feedback, utcnow
from loraforge.ui.queries.cache import CACHE
from loraforge.ui.queries.rollup import daily, midnight, window_start
from loraforge.ui.queries.sql import GROUPS
from loraforge.ui.settings import (
    DATA_CACHE_S,
    FEWSHOT_MIN_EXAMPLES,
    FINETUNE_MIN_EXAMPLES,
    GOOD_SCORE,
    THROUGHPUT_SAMPLE_CALLS,
)


def list_tasks(store: Store) -> list[str]:
    """Every task name, by a loose index scan (one index seek per task, not a scan of every call)."""
    tasks: list[str] = []
    with store.db.connect() as conn:
        last = conn.scalar(select(func.min(Call.task)))
        while last is not None:
            tasks.append(last)
            last = conn.scalar(select(func.min(Call.task)).where(Call.task > last))
    return tasks


@dataclass
class TaskOverview:
    task: str
    days: list[str]
    calls: dict[str, list[int]]  # group -> calls per day
    spend: list[float]  # USD per day, every group (adapter calls priced by the hardware)
    savings: list[float]  # USD per day: adapter calls at the general model's mean price, less their cost
    totals: dict[str, int] = field(default_factory=dict)
    total_spend: float = 0.0
    total_savings: float = 0.0
    route: Any = None  # loraforge.store.routes.Route or None
    verdict: Comparison | None = None
    data: dict[str, int] = field(default_factory=dict)
    stage_hint: str = ""
    throughput: Throughput | None = None


def overview(
    store: Store,
    task: str,
    window_days: int,
    hardware: HardwarePrice,
    throughput: Throughput | None = None,
    routes: dict | None = None,
    data: dict[str, dict[str, int]] | None = None,
) -> TaskOverview:
    """One task's figures; `routes` and `data` may be passed in when showing many tasks (read once)."""
    now = utcnow()
    start, today = window_start(now, window_days), midnight(now)
    days = [(start + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(window_days)]
    index = {d: i for i, d in enumerate(days)}
    calls = {g: [0] * len(days) for g in GROUPS}
    spend, tokens = [0.0] * len(days), defaultdict(int)
    general_spend = 0.0
    for d, g, n, usd, toks in daily(store, task, start, today):
        i = index.get(d)
        if i is None:
            continue
        calls[g][i] += n
        spend[i] += usd
        if g in ("adapter", "shadow"):
            tokens[(i, g)] += toks
        elif g in ("general", "fallback"):
            general_spend += usd
    if throughput is None and tokens:  # only a task with adapter calls in the window needs it
        throughput = _throughput_of(store, task, start)
    adapter_cost = [0.0] * len(days)
    if throughput is not None:  # adapter calls cost the machine's time, not a token price
        for (i, _g), toks in tokens.items():
            adapter_cost[i] += adapter_call_cost(toks, throughput.tokens_per_s, hardware)
            spend[i] += adapter_call_cost(toks, throughput.tokens_per_s, hardware)
    general_calls = sum(calls["general"]) + sum(calls["fallback"])
    mean_general = general_spend / general_calls if general_calls else None
    savings = [0.0] * len(days)
    if mean_general is not None and throughput is not None:
        savings = [calls["adapter"][i] * mean_general - adapter_cost[i] for i in range(len(days))]
    view = TaskOverview(task, days, calls, spend, savings, throughput=throughput)
    view.totals = {g: sum(v) for g, v in calls.items()}
    view.total_spend, view.total_savings = sum(spend), sum(savings)
    view.route = (routes if routes is not None else current_routes(store)).get(task)
    view.verdict = latest_comparison(store, task)
    view.data = (data if data is not None else data_available(store)).get(task, NO_DATA)
    view.stage_hint = stage_hint(view.data["good_examples"])
    return view


def _throughput_of(store: Store, task: str, start) -> Throughput | None:
    """Tokens/s of the task's newest adapter calls (a bounded sample: the page must not read them all)."""
    recent = (
        select(Call.prompt_tokens, Call.completion_tokens, Call.latency_ms)
        .where(Call.task == task, Call.time >= start, Call.served_by.like("adapter:%"), Call.status == "ok")
        .order_by(Call.time.desc())
        .limit(THROUGHPUT_SAMPLE_CALLS)
        .subquery()
    )
    query = select(
        func.sum(func.coalesce(recent.c.prompt_tokens, 0) + func.coalesce(recent.c.completion_tokens, 0)),
        func.sum(recent.c.latency_ms),
    )
    with store.db.connect() as conn:
        toks, latency_ms = conn.execute(query).one()
    return throughput_from_calls(int(toks or 0), (latency_ms or 0) / 1000)


def latest_comparison(store: Store, task: str) -> Comparison | None:
    query = select(Comparison).where(Comparison.task == task).order_by(Comparison.time.desc()).limit(1)
    with Session(store.db, expire_on_commit=False) as session:
        return session.scalars(query).first()


def data_available(store: Store) -> dict[str, dict[str, int]]:
    """Per task, the examples its traffic offers: calls with good feedback, corrected calls, and both.

    Read from the feedback (far fewer rows than calls), each looking up its call's task by primary key;
    kept for `DATA_CACHE_S` (feedback trickles in; the page need not read all of it on every load).
    """
    return CACHE.get_or_load(("data", store.url), DATA_CACHE_S, lambda: _data_available(store))


def _data_available(store: Store) -> dict[str, dict[str, int]]:
    task_of = (
        select(Call.task)
        .where(Call.id == Feedback.call_id, Call.shadow_of.is_(None))
        .correlate(Feedback)
        .scalar_subquery()
    )
    per_call = (
        select(
            task_of.label("task"),
            func.max(Feedback.score).label("score"),
            func.count(Feedback.corrected_output).label("corrections"),
        )
        .group_by(Feedback.call_id)
        .subquery()
    )
    good, corrected = per_call.c.score >= GOOD_SCORE, per_call.c.corrections > 0
    query = (
        select(
            per_call.c.task,
            func.count(),
            func.sum(cast(good, Integer)),
            func.sum(cast(corrected, Integer)),
            func.sum(cast(good | corrected, Integer)),
        )
        .where(per_call.c.task.is_not(None))
        .group_by(per_call.c.task)
    )
    with store.db.connect() as conn:
        return {
            task: {
                "with_feedback": int(n or 0),
                "good_score": int(g or 0),
                "corrected": int(c or 0),
                "good_examples": int(e or 0),
            }
            for task, n, g, c, e in conn.execute(query)
        }


NO_DATA = {"with_feedback": 0, "good_score": 0, "corrected": 0, "good_examples": 0}


def stage_hint(good_examples: int) -> str:
    if good_examples >= FINETUNE_MIN_EXAMPLES:
        return f"enough for a fine-tune (≥ {FINETUNE_MIN_EXAMPLES})"
    if good_examples >= FEWSHOT_MIN_EXAMPLES:
        return f"enough for few-shot (≥ {FEWSHOT_MIN_EXAMPLES}); a fine-tune needs {FINETUNE_MIN_EXAMPLES}"
    return f"general model (few-shot from {FEWSHOT_MIN_EXAMPLES} good examples)"
