"""`loraforge plan`: which approach fits the data a task has — stay on the general model, few-shot, or an
adapter — with the numbers behind it.

Data decides whether an approach is possible (few-shot needs a handful of reviewed examples, fine-tuning
enough to train and hold some out); held-out comparisons decide which is better: the newest saved
comparison on a dataset that measured each side gives its score, and an adapter is recommended over
few-shot only when it scored higher on held-out data.
"""

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import case, func, select

from loraforge.compare.sides import ADAPTER_PREFIX, FEWSHOT, GENERAL, is_fewshot
from loraforge.store.comparisons import list_comparisons
from loraforge.store.store import Store
from loraforge.store.tables import Call, Feedback

FINETUNE = "finetune"
# Reviewed examples below which few-shot has nothing to show the model (k is 8 by default), and below which
# an adapter has too little to learn from and hold out. Starting points: `compare` decides between them.
FEWSHOT_MIN_EXAMPLES = 8
FINETUNE_MIN_EXAMPLES = 100
GOOD_SCORE = 1.0  # a feedback score at least this makes a call a good example (`--min-score`)
HEADLINE_METRICS = ("accuracy", "field_accuracy", "exact_match", "rouge_l", "win_rate")


@dataclass
class Score:
    side: str  # the side as compared, e.g. adapter:banking77-v2
    metric: str
    value: float
    lo: float | None
    hi: float | None
    comparison_id: int
    items: int


@dataclass
class Plan:
    task: str
    recommendation: str  # general, fewshot or finetune
    reasons: list[str]
    counts: dict[str, int]
    scores: dict[str, Score | None] = field(default_factory=dict)  # general / fewshot / adapter

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["scores"] = {k: asdict(v) if v else None for k, v in self.scores.items()}
        return data


def data_counts(store: Store, task: str, min_score: float = GOOD_SCORE) -> dict[str, int]:
    """Logged calls of the task, how many a person reviewed, and how many of those are good examples
    (corrected, or scored >= min_score)."""
    latest = select(Feedback.call_id, func.max(Feedback.id).label("id")).group_by(Feedback.call_id).subquery()
    calls = select(Call.id).where(Call.task == task, Call.status == "ok", Call.shadow_of.is_(None))
    with store.db.connect() as conn:
        total = conn.scalar(select(func.count()).select_from(calls.subquery())) or 0
        row = conn.execute(
            select(
                func.count(Feedback.id),
                func.count(Feedback.corrected_output),
                func.sum(
                    case(((Feedback.score >= min_score) | Feedback.corrected_output.is_not(None), 1), else_=0)
                ),
            )
            .join(latest, latest.c.id == Feedback.id)
            .where(Feedback.call_id.in_(calls))
        ).one()
    reviewed, corrected, good = row[0] or 0, row[1] or 0, int(row[2] or 0)
    return {"calls": total, "reviewed": reviewed, "corrected": corrected, "good": good}


def side_kind(side: str) -> str:
    if side == GENERAL:
        return GENERAL
    if is_fewshot(side):
        return FEWSHOT
    return "adapter" if side.startswith(ADAPTER_PREFIX) else side


def held_out_scores(store: Store, task: str) -> dict[str, Score | None]:
    """The newest held-out (dataset) score of each kind of side: general, fewshot, adapter."""
    scores: dict[str, Score | None] = {GENERAL: None, FEWSHOT: None, "adapter": None}
    for comparison in reversed(list_comparisons(store, task)):
        if not comparison.source.startswith("dataset"):
            continue  # shadow pairs have no references: agreement, not quality
        metrics = comparison.result.get("metrics") or {}
        name = next((m for m in HEADLINE_METRICS if metrics.get(m)), None)
        if name is None:
            continue
        for role in ("candidate", "baseline"):
            side = getattr(comparison, role)
            kind = side_kind(side)
            figure = metrics[name].get(role)
            if kind in scores and scores[kind] is None and figure:
                scores[kind] = Score(
                    side, name, figure["value"], figure.get("lo"), figure.get("hi"), comparison.id,
                    comparison.items,
                )  # fmt: skip
    return scores


def make_plan(
    store: Store,
    task: str,
    *,
    min_score: float = GOOD_SCORE,
    fewshot_min: int = FEWSHOT_MIN_EXAMPLES,
    finetune_min: int = FINETUNE_MIN_EXAMPLES,
) -> Plan:
    counts = data_counts(store, task, min_score)
    good = counts["good"]
    scores = held_out_scores(store, task)
    general, fewshot, adapter = scores[GENERAL], scores[FEWSHOT], scores["adapter"]
    reasons = [f"{counts['calls']} logged calls, {good} reviewed as good ({counts['corrected']} corrected)"]
    for kind, score in scores.items():
        if score is not None:
            interval = f" [{score.lo:.3f}, {score.hi:.3f}]" if score.lo is not None else ""
            reasons.append(
                f"{kind}: {score.metric} {score.value:.3f}{interval} on {score.items} held-out items "
                f"(comparison #{score.comparison_id}, {score.side})"
            )
    if good < fewshot_min:
        reasons.append(f"fewer than {fewshot_min} good examples: not enough to show or teach the model")
        return Plan(task, GENERAL, reasons, counts, scores)
    rival = fewshot or general
    if adapter is not None and (rival is None or adapter.value > rival.value):
        than = f"than {'few-shot' if fewshot else 'the general model'} " if rival else ""
        reasons.append(f"the adapter scored higher {than}on held-out data")
        return Plan(task, FINETUNE, reasons, counts, scores)
    if adapter is not None:
        reasons.append("the adapter did not beat few-shot on held-out data: keep few-shot, collect more")
    elif good >= finetune_min:
        reasons.append(
            f"{good} good examples (>= {finetune_min}): train an adapter and compare it with few-shot"
        )
        return Plan(task, FINETUNE, reasons, counts, scores)
    else:
        reasons.append(f"{good} good examples: enough to prompt with, fewer than {finetune_min} to train on")
    if fewshot is not None and general is not None and fewshot.value < general.value:
        reasons.append("few-shot scored below the general model on held-out data")
        return Plan(task, GENERAL, reasons, counts, scores)
    return Plan(task, FEWSHOT, reasons, counts, scores)
