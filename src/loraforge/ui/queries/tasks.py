"""The tasks page: per task, calls per day by who answered, spend and savings, route, verdict, data."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Integer, func, select
from sqlalchemy.orm import Session

from loraforge.cost.hardware import HardwarePrice, adapter_call_cost
from loraforge.cost.throughput import Throughput, throughput_from_calls
from loraforge.store.models import Call, Comparison, Feedback, utcnow
from loraforge.store.routes import current_routes
from loraforge.store.store import Store
from loraforge.ui.queries.sql import GROUPS, day_of, served_group
from loraforge.ui.settings import (
    FEWSHOT_MIN_EXAMPLES,
    FINETUNE_MIN_EXAMPLES,
    GOOD_SCORE,
    THROUGHPUT_SAMPLE_CALLS,
)


def list_tasks(store: Store) -> list[str]:
    """Every task name, by a loose index scan (one index seek per task, not a scan of every call)."""
    tasks: list[str] = []
    with store.engine.connect() as conn:
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
) -> TaskOverview:
    since = utcnow() - timedelta(days=window_days)
    days = [(since + timedelta(days=i + 1)).strftime("%Y-%m-%d") for i in range(window_days)]
    index = {d: i for i, d in enumerate(days)}
    calls = {g: [0] * len(days) for g in GROUPS}
    spend, tokens = [0.0] * len(days), defaultdict(int)
    general_spend = 0.0
    day, group = day_of(store.dialect), served_group()
    query = (
        select(
            day.label("day"),
            group.label("grp"),
            func.count(),
            func.sum(Call.cost_usd),
            func.sum(func.coalesce(Call.prompt_tokens, 0) + func.coalesce(Call.completion_tokens, 0)),
        )
        .where(Call.task == task, Call.time >= since)
        .group_by(day, group)
    )
    with store.engine.connect() as conn:
        for d, g, n, usd, toks in conn.execute(query):
            i = index.get(d)
            if i is None:
                continue
            calls[g][i] += n
            spend[i] += usd or 0.0
            if g in ("adapter", "shadow"):
                tokens[(i, g)] += int(toks or 0)
            elif g in ("general", "fallback"):
                general_spend += usd or 0.0
    throughput = throughput or _throughput_of(store, task)
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
    view.data = data_available(store, task)
    view.stage_hint = stage_hint(view.data["good_examples"])
    return view


def _throughput_of(store: Store, task: str) -> Throughput | None:
    """Tokens/s of the task's newest adapter calls (a bounded sample: the page must not read them all)."""
    recent = (
        select(Call.prompt_tokens, Call.completion_tokens, Call.latency_ms)
        .where(Call.task == task, Call.served_by.like("adapter:%"), Call.status == "ok")
        .order_by(Call.time.desc())
        .limit(THROUGHPUT_SAMPLE_CALLS)
        .subquery()
    )
    query = select(
        func.sum(func.coalesce(recent.c.prompt_tokens, 0) + func.coalesce(recent.c.completion_tokens, 0)),
        func.sum(recent.c.latency_ms),
    )
    with store.engine.connect() as conn:
        toks, latency_ms = conn.execute(query).one()
    return throughput_from_calls(int(toks or 0), (latency_ms or 0) / 1000)


def latest_comparison(store: Store, task: str) -> Comparison | None:
    query = select(Comparison).where(Comparison.task == task).order_by(Comparison.time.desc()).limit(1)
    with Session(store.engine, expire_on_commit=False) as session:
        return session.scalars(query).first()


def data_available(store: Store, task: str) -> dict[str, int]:
    """Examples the task's traffic offers: calls with good feedback, corrected calls, and their union."""
    fb = (
        select(
            Feedback.call_id,
            func.max(Feedback.score).label("score"),
            func.count(Feedback.corrected_output).label("corrections"),
        )
        .join(Call, Call.id == Feedback.call_id)
        .where(Call.task == task, Call.shadow_of.is_(None))
        .group_by(Feedback.call_id)
        .subquery()
    )
    good = fb.c.score >= GOOD_SCORE
    query = select(
        func.count(),
        func.sum(func.cast(good, Integer)),
        func.sum(func.cast(fb.c.corrections > 0, Integer)),
        func.sum(func.cast(good | (fb.c.corrections > 0), Integer)),
    ).select_from(fb)
    with store.engine.connect() as conn:
        with_feedback, good_n, corrected, examples = conn.execute(query).one()
    return {
        "with_feedback": int(with_feedback or 0),
        "good_score": int(good_n or 0),
        "corrected": int(corrected or 0),
        "good_examples": int(examples or 0),
    }


def stage_hint(good_examples: int) -> str:
    if good_examples >= FINETUNE_MIN_EXAMPLES:
        return f"enough for a fine-tune (≥ {FINETUNE_MIN_EXAMPLES})"
    if good_examples >= FEWSHOT_MIN_EXAMPLES:
        return f"enough for few-shot (≥ {FEWSHOT_MIN_EXAMPLES}); a fine-tune needs {FINETUNE_MIN_EXAMPLES}"
    return f"general model (few-shot from {FEWSHOT_MIN_EXAMPLES} good examples)"
