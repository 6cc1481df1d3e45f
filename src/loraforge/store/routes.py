"""Routes of tasks to adapters (or to few-shot prompting), kept as an append-only history in the store.

Each change (set, off, rollback) is one row holding the full resulting route, who made it, when and why; a
task's current route is its newest row. A rollback returns to the state before the current one, so repeated
rollbacks walk further back (like undo).
"""

import getpass
import math
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from loraforge.errors import LoraforgeError
from loraforge.fewshot.settings import DEFAULT_K, MAX_K
from loraforge.store.output_spec import OutputSpec
from loraforge.store.store import Store
from loraforge.store.tables import RouteChange, utcnow

FEWSHOT = "fewshot"  # answered by a model prompted with the task's most similar good examples
STAGES = ("shadow", "canary", "full", FEWSHOT)
GENERAL_MODEL = "general"  # a few-shot route's model: the client's model on the gateway's upstream
FALLBACKS = ("on-error", "on-invalid")
DEFAULT_FALLBACK = FALLBACKS  # canary and full fall back on both unless told otherwise
DEFAULT_TIMEOUT_MS = 30_000
ADAPTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")
_RETRIES = 5  # concurrent changes of one task collide on (task, seq); the loser retries


@dataclass(frozen=True)
class Route:
    """A task's current route: to an adapter (shadow, canary, full) or to few-shot prompting."""

    task: str
    stage: str
    adapter: str  # "" for a few-shot route
    percent: float = 100.0
    fallback: tuple[str, ...] = DEFAULT_FALLBACK
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    output: OutputSpec = field(default_factory=OutputSpec)
    seq: int = 0
    # Few-shot: who answers ("general", or a model of the specialist server), with how many examples, and
    # which calls are good examples (corrections, and calls scored at least min_score when it is set).
    model: str = GENERAL_MODEL
    k: int = DEFAULT_K
    min_score: float | None = None

    def options(self) -> dict[str, Any]:
        return {"model": self.model, "k": self.k, "min_score": self.min_score}


def default_actor() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # no user name in a bare container: still say where it came from
        return socket.gethostname()


def validate_route(
    stage: str,
    adapter: str | None,
    percent: float | None,
    fallback: tuple[str, ...],
    timeout_ms: int,
    *,
    model: str | None = None,
    k: int | None = None,
    min_score: float | None = None,
) -> float:
    """Raises LoraforgeError naming the bad option; returns the effective percent."""
    if stage not in STAGES:
        raise LoraforgeError(f"--stage {stage!r}: choose one of {', '.join(STAGES)}")
    if stage == FEWSHOT:
        _validate_fewshot(adapter, model, k, min_score)
    else:
        given = [
            name for name, v in (("--model", model), ("--k", k), ("--min-score", min_score)) if v is not None
        ]
        if given:
            raise LoraforgeError(f"{', '.join(given)} applies to stage fewshot only, not to {stage!r}")
        if not adapter:
            raise LoraforgeError(f"--adapter is required for stage {stage!r}")
        if not ADAPTER_NAME_RE.match(adapter):
            raise LoraforgeError(f"--adapter {adapter!r} is not a valid adapter name")
    unknown = [f for f in fallback if f not in FALLBACKS]
    if unknown:
        raise LoraforgeError(f"--fallback {','.join(unknown)}: choose from {', '.join(FALLBACKS)} or none")
    if timeout_ms <= 0:
        raise LoraforgeError(f"--timeout-ms must be positive, got {timeout_ms}")
    if stage == "canary":
        if percent is None or not 0 < percent < 100:
            raise LoraforgeError(
                "--percent is required for a canary and must be between 0 and 100 (exclusive)"
            )
        return float(percent)
    if percent is not None:
        raise LoraforgeError(f"--percent applies to a canary only, not to stage {stage!r}")
    return 100.0 if stage in ("full", FEWSHOT) else 0.0


def _validate_fewshot(adapter: str | None, model: str | None, k: int | None, min_score: float | None) -> None:
    if adapter:
        raise LoraforgeError("--adapter does not apply to stage fewshot (use --model general|NAME)")
    if model is not None and model != GENERAL_MODEL and not ADAPTER_NAME_RE.match(model):
        raise LoraforgeError(f"--model {model!r} is not a valid model name (or 'general')")
    if k is not None and not 1 <= k <= MAX_K:
        raise LoraforgeError(f"--k must be between 1 and {MAX_K}, got {k}")
    if min_score is not None and not math.isfinite(min_score):
        raise LoraforgeError(f"--min-score must be a finite number, got {min_score}")


def set_route(
    store: Store,
    task: str,
    stage: str,
    adapter: str | None = None,
    *,
    percent: float | None = None,
    fallback: tuple[str, ...] = DEFAULT_FALLBACK,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    output: OutputSpec | None = None,
    actor: str | None = None,
    reason: str | None = None,
    model: str | None = None,
    k: int | None = None,
    min_score: float | None = None,
) -> RouteChange:
    """Append a route change. Stage fewshot takes `model` ("general", the default, or a specialist-server
    model), `k` (default DEFAULT_K) and `min_score` instead of an adapter."""
    effective = validate_route(
        stage, adapter, percent, fallback, timeout_ms, model=model, k=k, min_score=min_score
    )
    options = None
    if stage == FEWSHOT:
        options = {
            "model": model or GENERAL_MODEL,
            "k": k if k is not None else DEFAULT_K,
            "min_score": min_score,
        }
    state = {
        "stage": stage,
        "adapter": adapter if stage != FEWSHOT else None,
        "percent": effective,
        "fallback": list(fallback),
        "timeout_ms": timeout_ms,
        "output": (output or OutputSpec()).to_json(),
        "options": options,
    }
    return _append(store, task, "set", state, actor, reason, None)


def route_off(store: Store, task: str, *, actor: str | None = None, reason: str | None = None) -> RouteChange:
    """Send all of the task's calls to the general model again."""
    current = latest_change(store, task)
    if current is None or current.stage == "off":
        raise LoraforgeError(f"task {task!r} has no route to turn off")
    return _append(store, task, "off", _OFF, actor, reason, None)


def rollback_route(
    store: Store, task: str, *, actor: str | None = None, reason: str | None = None
) -> RouteChange:
    """Restore the route the task had before its current one."""
    with Session(store.db) as session:
        current = _latest(session, task)
        if current is None:
            raise LoraforgeError(f"task {task!r} has no route history to roll back")
        if current.previous_seq is None:
            raise LoraforgeError(f"task {task!r}: nothing before route change #{current.seq} to roll back to")
        target = session.scalars(
            select(RouteChange).where(RouteChange.task == task, RouteChange.seq == current.previous_seq)
        ).one()
        state = _state_of(target)
        before_target = target.previous_seq
    return _append(store, task, "rollback", state, actor, reason, before_target, rollback=True)


def restore_route(
    store: Store, task: str, seq: int | None, *, actor: str | None = None, reason: str | None = None
) -> RouteChange:
    """Return the task to the route of change #seq (None: no route, the general model answers), recorded as
    a rollback: what an automatic rollback does when a promotion fails."""
    state, before_target = _OFF, None
    if seq is not None:
        with Session(store.db) as session:
            target = session.scalars(
                select(RouteChange).where(RouteChange.task == task, RouteChange.seq == seq)
            ).first()
            if target is None:
                raise LoraforgeError(f"task {task!r} has no route change #{seq}")
            state, before_target = _state_of(target), target.previous_seq
    return _append(store, task, "rollback", state, actor, reason, before_target, rollback=True)


def latest_change(store: Store, task: str) -> RouteChange | None:
    with Session(store.db, expire_on_commit=False) as session:
        return _latest(session, task)


def current_routes(store: Store) -> dict[str, Route]:
    """Every task's current route (tasks whose route is off are absent)."""
    newest = select(RouteChange.task, func.max(RouteChange.seq).label("seq")).group_by(RouteChange.task)
    sub = newest.subquery()
    query = select(RouteChange).join(sub, (RouteChange.task == sub.c.task) & (RouteChange.seq == sub.c.seq))
    with Session(store.db) as session:
        return {c.task: to_route(c) for c in session.scalars(query) if c.stage != "off"}


def route_history(store: Store, task: str | None = None) -> list[RouteChange]:
    query = select(RouteChange).order_by(RouteChange.task, RouteChange.seq)
    if task is not None:
        query = query.where(RouteChange.task == task)
    with Session(store.db, expire_on_commit=False) as session:
        return list(session.scalars(query))


def to_route(change: RouteChange) -> Route:
    options = change.options or {}
    return Route(
        task=change.task,
        stage=change.stage,
        adapter=change.adapter or "",
        percent=change.percent if change.percent is not None else 0.0,
        fallback=tuple(change.fallback or ()),
        timeout_ms=change.timeout_ms or DEFAULT_TIMEOUT_MS,
        output=OutputSpec.from_json(change.output),
        seq=change.seq,
        model=options.get("model") or GENERAL_MODEL,
        k=options.get("k") or DEFAULT_K,
        min_score=options.get("min_score"),
    )


_OFF: dict[str, Any] = {
    "stage": "off",
    "adapter": None,
    "percent": None,
    "fallback": [],
    "timeout_ms": None,
    "output": {},
    "options": None,
}


def _state_of(change: RouteChange) -> dict[str, Any]:
    return {key: getattr(change, key) for key in _OFF}


def _latest(session: Session, task: str) -> RouteChange | None:
    query = select(RouteChange).where(RouteChange.task == task).order_by(RouteChange.seq.desc()).limit(1)
    return session.scalars(query).first()


def _append(
    store: Store,
    task: str,
    action: str,
    state: dict[str, Any],
    actor: str | None,
    reason: str | None,
    previous_seq: int | None,
    rollback: bool = False,
) -> RouteChange:
    for _ in range(_RETRIES):
        try:
            with Session(store.db, expire_on_commit=False) as session, session.begin():
                current = _latest(session, task)
                seq = current.seq + 1 if current else 1
                change = RouteChange(
                    task=task,
                    seq=seq,
                    time=utcnow(),
                    action=action,
                    actor=actor or default_actor(),
                    reason=reason,
                    previous_seq=previous_seq if rollback else (current.seq if current else None),
                    **state,
                )
                session.add(change)
            return change
        except IntegrityError:
            continue
    raise LoraforgeError(f"task {task!r}: the route changed concurrently {_RETRIES} times; try again")
