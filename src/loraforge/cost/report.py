"""`loraforge report cost`: calls, tokens, spend and latency by task and by who answered, and the savings
of the adapters' calls against what the general model would have cost.

Pricing: the general model's calls (and fallbacks) at their token prices (`cost_usd` recorded by the
gateway, else estimated now from the price table); an adapter's calls, shadow ones included, by the
hardware's hourly price and the tokens/s measured on that deployment — never at zero, never at a token
price. The counterfactual of an adapter call is the task's mean cost of a general call in the same window
(else its tokens at the requested model's price).
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from loraforge.cost.hardware import HardwarePrice, adapter_call_cost
from loraforge.cost.prices import PriceTable
from loraforge.cost.throughput import Throughput, throughput_from_calls
from loraforge.curation.datasets import parse_since
from loraforge.store.store import Store
from loraforge.store.tables import Call, utcnow

DAYS_PER_MONTH = 30
MIN_SPAN = timedelta(hours=1)  # a projection from less traffic than this would say nothing


@dataclass
class _Group:
    calls: int = 0
    ok: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    spend: float = 0.0
    unpriced: int = 0  # calls that could not be priced (no token counts, or no price for the model)
    counterfactual: float = 0.0  # adapters: what the general model would have cost
    no_counterfactual: int = 0  # adapter calls whose general price is unknown: savings cannot be told


def who_answered(call: Call) -> str:
    """general, fallback, adapter:NAME, or "shadow adapter:NAME" (logged before routing: general)."""
    who = call.served_by or "general"
    return f"shadow {who}" if call.shadow_of else who


def cost_report(
    store: Store,
    prices: PriceTable,
    hardware: HardwarePrice,
    throughput: Throughput | None,
    task: str | None = None,
    since: str = "30d",
) -> dict[str, Any]:
    start = parse_since(since)
    query = select(Call).where(Call.time >= start, Call.task.is_not(None)).order_by(Call.time)
    if task is not None:
        query = query.where(Call.task == task)
    with Session(store.db) as session:
        calls = list(session.scalars(query))
    adapter_calls = [c for c in calls if (c.served_by or "").startswith("adapter:") and c.status == "ok"]
    if throughput is None:
        tokens = sum((c.prompt_tokens or 0) + (c.completion_tokens or 0) for c in adapter_calls)
        throughput = throughput_from_calls(tokens, sum(c.latency_ms or 0 for c in adapter_calls) / 1000)
    groups: dict[str, dict[str, _Group]] = defaultdict(lambda: defaultdict(_Group))
    for call in calls:
        _add(groups[call.task][who_answered(call)], call, prices, hardware, throughput)
    now = utcnow()
    first = calls[0].time if calls else now
    span = max(now - max(start, first), MIN_SPAN)
    tasks = {
        name: _task_summary(by_who, calls_of(calls, name), prices, span) for name, by_who in groups.items()
    }
    total = {
        key: sum(t[key] for t in tasks.values() if t[key] is not None)
        for key in ("calls", "spend_usd", "savings_usd", "projected_monthly_savings_usd")
    }
    return {
        "since": since,
        "window_start": start.isoformat(timespec="seconds"),
        "hardware": {"name": hardware.name, "per_hour_usd": hardware.per_hour, "taken": hardware.taken},
        "throughput": {"tokens_per_s": throughput.tokens_per_s, "source": throughput.source}
        if throughput
        else None,
        "general_prices_taken": prices.taken,
        "tasks": tasks,
        "total": total,
    }


def calls_of(calls: list[Call], task: str) -> list[Call]:
    return [c for c in calls if c.task == task]


def _add(g: _Group, call: Call, prices: PriceTable, hardware: HardwarePrice, tps: Throughput | None) -> None:
    g.calls += 1
    if call.status != "ok":
        return  # a failed call is not billed, and its latency is not a served answer's
    g.ok += 1
    prompt, completion = call.prompt_tokens, call.completion_tokens
    g.prompt_tokens += prompt or 0
    g.completion_tokens += completion or 0
    if call.latency_ms is not None:
        g.latencies.append(call.latency_ms)
    if (call.served_by or "").startswith("adapter:"):
        if tps is None or prompt is None or completion is None:
            g.unpriced += 1
        else:
            g.spend += adapter_call_cost(prompt + completion, tps.tokens_per_s, hardware)
        return
    cost = call.cost_usd
    if cost is None:
        cost = prices.estimate(call.served_model or call.requested_model, prompt, completion)
    if cost is None:
        g.unpriced += 1
    else:
        g.spend += cost


def _task_summary(
    by_who: dict[str, _Group], calls: list[Call], prices: PriceTable, span: timedelta
) -> dict[str, Any]:
    general = by_who.get("general")
    priced_general = general.ok - general.unpriced if general else 0
    mean_general = general.spend / priced_general if general and priced_general else None
    savings = 0.0
    for call in calls:
        if call.shadow_of or call.status != "ok" or not (call.served_by or "").startswith("adapter:"):
            continue
        if mean_general is not None:
            counterfactual = mean_general
        else:
            counterfactual = prices.estimate(call.requested_model, call.prompt_tokens, call.completion_tokens)
        if counterfactual is None:
            by_who[call.served_by].no_counterfactual += 1
        else:
            by_who[call.served_by].counterfactual += counterfactual
    rows = {}
    unknown = sum(g.no_counterfactual for g in by_who.values())
    for who, g in sorted(by_who.items()):
        if who.startswith("adapter:"):
            savings += g.counterfactual - g.spend
        elif who.startswith("shadow "):
            savings -= g.spend  # mirroring traffic is a cost of the switch
        rows[who] = {
            "calls": g.calls,
            "ok": g.ok,
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.completion_tokens,
            "spend_usd": g.spend,
            "unpriced_calls": g.unpriced,
            "latency_p50_ms": float(np.percentile(g.latencies, 50)) if g.latencies else None,
            "latency_p95_ms": float(np.percentile(g.latencies, 95)) if g.latencies else None,
            **({"general_would_cost_usd": g.counterfactual} if who.startswith("adapter:") else {}),
        }
    if unknown:
        basis = f"unknown: {unknown} adapter calls ask for a general model without a price"
    else:
        basis = "mean general call of the task" if mean_general is not None else "token prices"
    return {
        "calls": sum(g.calls for who, g in by_who.items() if not who.startswith("shadow ")),
        "spend_usd": sum(g.spend for g in by_who.values()),
        "savings_usd": None if unknown else savings,
        "projected_monthly_savings_usd": None
        if unknown
        else savings / (span / timedelta(days=1)) * DAYS_PER_MONTH,
        "counterfactual": basis,
        "by_who": rows,
    }
