"""One turn of a task's flywheel, as a sequence of steps recorded in the store:

    dataset → train → register → compare → shadow → canary → full

Each step does its work, then records what it made and the next step in one transaction, so a crash
anywhere resumes at the step it reached: a dataset version is built once per turn, training resumes from
the run's checkpoint (never a second run on the same data), registering and comparing are repeated as a
whole. Rollout steps wait for live traffic: each `run-once` judges the stage's calls against the policy's
limits and moves on, waits, or rolls back.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from loraforge.flywheel import actions
from loraforge.flywheel.live import live_stats, over_limits
from loraforge.flywheel.policy import FlywheelPolicy
from loraforge.flywheel.records import (
    DONE,
    ROLLED_BACK,
    RUNNING,
    STOPPED,
    active_run,
    list_runs,
    start_run,
    task_lock,
    update_run,
)
from loraforge.gateway.routing import adapter_label
from loraforge.spans import span_seconds
from loraforge.store.retention import prune_calls
from loraforge.store.routes import latest_change, restore_route, set_route
from loraforge.store.store import Store
from loraforge.store.tables import FlywheelRun, utcnow

ACTOR = "flywheel"


@dataclass(frozen=True)
class TurnReport:
    """What one `run-once` did for a task."""

    task: str
    outcome: str  # idle, busy, waiting, done, stopped, rolled_back
    message: str
    run_id: int | None = None


def run_once(
    store: Store,
    policy: FlywheelPolicy,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    echo: Callable[[str], None] = lambda _: None,
) -> TurnReport:
    """Advance the task's flywheel as far as it can go now (one turn at most)."""
    lease = span_seconds(policy.lock_lease) or 300.0
    with task_lock(store, policy.task, lease) as held:
        if not held:
            return TurnReport(policy.task, "busy", "another flywheel is turning this task")
        if policy.retention.keep_days is not None or policy.retention.keep_rows is not None:
            pruned = prune_calls(
                store,
                task=policy.task,
                keep_days=policy.retention.keep_days,
                keep_rows=policy.retention.keep_rows,
            )
            if pruned.deleted:
                echo(f"retention: deleted {pruned.deleted} old calls of {policy.task}")
        run = active_run(store, policy.task)
        if run is None:
            regression = _check_promoted(store, policy)
            if regression is not None:
                return regression
            why_not = actions.trigger_not_met(store, policy)
            if why_not is not None:
                return TurnReport(policy.task, "idle", why_not)
            run = start_run(store, policy.task, "dataset")
            echo(f"{policy.task}: turn #{run.id} starts")
        return _Turn(store, policy, run, echo).advance(should_stop)


class _Turn:
    def __init__(self, store: Store, policy: FlywheelPolicy, run: FlywheelRun, echo) -> None:
        self.store, self.policy, self.run, self.echo = store, policy, run, echo

    def advance(self, should_stop: Callable[[], bool]) -> TurnReport:
        while self.run.status == RUNNING:
            if should_stop():
                return self._report("waiting", f"stopping before step {self.run.step}")
            step = self.run.step
            handler = getattr(self, f"_{step}", None) or self._rollout
            waiting = handler()
            if waiting is not None:
                return self._report("waiting", waiting)
        return self._report(self.run.status, self.run.reason or f"turn #{self.run.id} is {self.run.status}")

    def _report(self, outcome: str, message: str) -> TurnReport:
        return TurnReport(self.policy.task, outcome, message, self.run.id)

    def _update(self, message: str | None = None, **fields) -> None:
        step = self.run.step
        self.run = update_run(self.store, self.run, message, **fields)
        if message:
            self._echo(step, message)

    def _echo(self, step: str, message: str) -> None:
        self.echo(f"{self.policy.task} #{self.run.id} {step}: {message}")

    def _stop(self, reason: str, **fields) -> None:
        self._update(reason, status=STOPPED, reason=reason, **fields)

    def _dataset(self) -> None:
        examples = actions.count_usable(self.store, self.policy)
        built = actions.build_version(self.store, self.policy)
        used = [r.id for r in actions.runs_on(self.store, self.policy, built.version) if r.id != self.run.id]
        fields = {"dataset_name": built.name, "dataset_version": built.version, "examples": examples}
        if used:
            return self._stop(f"no new data: dataset v{built.version} was already used by turn #{used[0]}")
        if not built.counts.get("test"):
            return self._stop(f"dataset v{built.version} has no test rows to compare on", **fields)
        c = built.counts
        self._update(
            f"dataset {built.name} v{built.version}: {c['train']} train / {c['test']} test rows",
            step="train",
            **fields,
        )

    def _train(self) -> None:
        run_dir, resumed = actions.train(self.store, self.policy, self.run.dataset_version, self.echo)
        name = self.policy.adapter_name(self.run.dataset_version)
        how = "resumed from its checkpoint and finished" if resumed else "trained"
        message = f"{how} adapter {name} in {run_dir}"
        self._update(message, step="register", run_dir=str(run_dir), adapter=name)

    def _register(self) -> None:
        actions.register(self.policy, self.run.adapter, actions.adapter_dir(self.run.run_dir))
        where = self.policy.serving.specialist_url
        self._update(f"adapter {self.run.adapter} loaded on {where}", step="compare")

    def _compare(self) -> None:
        baseline = actions.serving_now(self.store, self.policy.task)
        dataset = f"{self.run.dataset_name}:{self.run.dataset_version}"
        candidate = adapter_label(self.run.adapter)
        result = actions.compare(self.store, self.policy, candidate, baseline, dataset, self.policy.gate)
        summary = actions.summarize(result)
        if not result["gate_passed"]:
            return self._stop(
                f"gate `{self.policy.gate}` failed against {baseline}: {summary}",
                comparison_id=result["id"],
            )
        first = actions.rollout_ids(self.policy)[0]
        self._update(
            f"gate `{self.policy.gate}` passed against {baseline}: {summary}",
            step=first,
            comparison_id=result["id"],
        )

    def _rollout(self) -> str | None:
        ids = actions.rollout_ids(self.policy)
        index = ids.index(self.run.step)
        step = self.policy.rollout[index]
        current = latest_change(self.store, self.policy.task)
        if self.run.route_seq is None:
            return self._enter(index, current)
        if current is None or current.seq != self.run.route_seq:
            who = f"change #{current.seq} by {current.actor}" if current else "its removal"
            return self._stop(f"the route was changed outside the flywheel ({who}); turn stopped")
        if step.stage == "full":
            return self._update(
                f"{self.run.adapter} serves all of {self.policy.task}", status=DONE, reason="promoted"
            )
        stats = live_stats(self.store, self.policy.task, self.run.adapter, step.stage, self.run.stage_since)
        reason = over_limits(stats, self.policy.limits)
        if reason is not None:
            return self._roll_back(f"{step.stage}: {reason}")
        elapsed = utcnow() - self.run.stage_since
        need = timedelta(seconds=span_seconds(step.min_duration) if step.min_duration else 0)
        if stats.calls < step.min_calls or elapsed < need:
            return (
                f"{step.stage}: {stats.calls}/{step.min_calls} calls, "
                f"{_minutes(elapsed)}/{_minutes(need)} — {stats.describe()}"
            )
        self._update(
            f"{step.stage} passed: {stats.describe()}",
            step=ids[index + 1],
            route_seq=None,
            stage_since=None,
        )
        return None

    def _enter(self, index: int, current) -> None:
        """Set the route of rollout step `index` (or adopt it, when a crash came right after setting it)."""
        step = self.policy.rollout[index]
        tag = f"flywheel turn #{self.run.id}: {step.stage}"
        if current is not None and current.actor == ACTOR and current.reason == tag:
            change = current
        else:
            change = set_route(
                self.store,
                self.policy.task,
                step.stage,
                self.run.adapter,
                percent=step.percent,
                output=self.policy.output.spec(),
                actor=ACTOR,
                reason=tag,
            )
        fields = {"route_seq": change.seq, "stage_since": change.time}
        if index == 0:
            fields["route_before"] = change.previous_seq
        share = f" {step.percent:g}%" if step.percent is not None else ""
        self._update(f"route → {step.stage}{share} (change #{change.seq})", **fields)

    def _roll_back(self, reason: str) -> None:
        step = self.run.step
        self.run = roll_back(self.store, self.policy.task, self.run, reason)
        self._echo(step, self.run.events[-1]["message"])


def _check_promoted(store: Store, policy: FlywheelPolicy) -> TurnReport | None:
    """Roll back the task's promoted adapter when its live numbers went past the limits."""
    current = latest_change(store, policy.task)
    run = next((r for r in list_runs(store, policy.task) if r.status == DONE), None)
    if run is None or current is None or current.seq != run.route_seq:
        return None  # nothing promoted, or the route moved on since (a person, a rollback): not ours to judge
    window = policy.limits.window_calls
    stats = live_stats(store, policy.task, run.adapter, "full", run.stage_since, window=window)
    reason = over_limits(stats, policy.limits)
    if reason is None:
        return None
    run = roll_back(store, policy.task, run, f"after promotion: {reason}")
    return TurnReport(policy.task, ROLLED_BACK, run.reason or reason, run.id)


def roll_back(store: Store, task: str, run: FlywheelRun, reason: str) -> FlywheelRun:
    """Return `task` to the route it had before turn `run` (recorded as a rollback by the flywheel) and mark
    the turn rolled back with `reason`; returns the updated turn."""
    change = restore_route(store, task, run.route_before, actor=ACTOR, reason=f"rollback: {reason}")
    message = f"rolled back (change #{change.seq}): {reason}"
    return update_run(store, run, message, status=ROLLED_BACK, reason=reason)


def _minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60:.0f} min"
