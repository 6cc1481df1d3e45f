"""How an adapter does on live traffic in its current stage, from the calls the gateway logged: the share
that fell back to the general model, the share of invalid answers, and the feedback people gave.

In shadow the adapter's mirrored answers are judged (an error or an invalid answer is a fallback that would
have happened); in canary and full, the calls the route sent to it.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, case, func, select

from loraforge.flywheel.policy import LimitsSection
from loraforge.gateway.routing import FALLBACK, adapter_label
from loraforge.store.store import Store
from loraforge.store.tables import Call, Feedback


@dataclass(frozen=True)
class LiveStats:
    calls: int
    fallbacks: int  # the general model answered instead (or, in shadow, would have)
    invalid: int
    feedback: int  # scored calls
    feedback_mean: float | None

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.calls if self.calls else 0.0

    @property
    def invalid_rate(self) -> float:
        return self.invalid / self.calls if self.calls else 0.0

    def describe(self) -> str:
        text = f"{self.calls} calls, fallback rate {self.fallback_rate:.1%}"
        text += f", invalid rate {self.invalid_rate:.1%}"
        if self.feedback_mean is not None:
            text += f", mean feedback {self.feedback_mean:.2f} over {self.feedback}"
        return text


def _calls(task: str, adapter: str, stage: str, since: datetime) -> Select:
    label = adapter_label(adapter)
    query = select(Call.id, Call.status, Call.served_by, Call.fallback_reason).where(
        Call.task == task, Call.time >= since
    )
    if stage == "shadow":
        return query.where(Call.shadow_of.is_not(None), Call.served_by == label)
    return query.where(
        Call.shadow_of.is_(None), Call.route_stage == stage, Call.served_by.in_([label, FALLBACK])
    )


def live_stats(
    store: Store, task: str, adapter: str, stage: str, since: datetime, window: int | None = None
) -> LiveStats:
    """The stage's calls since `since` (only the newest `window` of them when given)."""
    query = _calls(task, adapter, stage, since)
    if window is not None:
        query = query.order_by(Call.time.desc(), Call.id.desc()).limit(window)
    sub = query.subquery()
    fell_back = (sub.c.served_by == FALLBACK) | (sub.c.status != "ok")
    if stage == "shadow":
        fell_back = fell_back | sub.c.fallback_reason.is_not(None)
    counts = select(
        func.count(),
        func.sum(case((fell_back, 1), else_=0)),
        func.sum(case((sub.c.fallback_reason.like("invalid%"), 1), else_=0)),
    ).select_from(sub)
    scores = select(func.count(Feedback.score), func.avg(Feedback.score)).where(
        Feedback.call_id.in_(select(sub.c.id)), Feedback.score.is_not(None)
    )
    with store.db.connect() as conn:
        calls, fallbacks, invalid = conn.execute(counts).one()
        scored, mean = conn.execute(scores).one()
    return LiveStats(
        calls or 0, int(fallbacks or 0), int(invalid or 0), scored or 0, float(mean) if scored else None
    )


def over_limits(stats: LiveStats, limits: LimitsSection) -> str | None:
    """Why the adapter must be rolled back, or None (also None before `min_calls` calls: too few to judge)."""
    if stats.calls < limits.min_calls:
        return None
    if stats.fallback_rate > limits.max_fallback_rate:
        return f"fallback rate above {limits.max_fallback_rate:.1%} ({stats.describe()})"
    if stats.invalid_rate > limits.max_invalid_rate:
        return f"invalid rate above {limits.max_invalid_rate:.1%} ({stats.describe()})"
    low, mean = limits.min_feedback_score, stats.feedback_mean
    if low is not None and mean is not None and stats.feedback >= limits.min_calls and mean < low:
        return f"mean feedback below {low} ({stats.describe()})"
    return None
