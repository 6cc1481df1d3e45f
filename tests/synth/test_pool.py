"""Bounded concurrency: the limit holds, a failure stops new work but keeps the answers already in flight."""

import asyncio

import pytest

from loraforge.synth.pool import run_bounded


def make_jobs(plan: list[tuple[float, bool]], state: dict):
    """Jobs that sleep, then return their index or raise; `state` tracks how many run at once."""

    def job(i: int, delay: float, fail: bool):
        async def run():
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
            state["started"].append(i)
            try:
                await asyncio.sleep(delay)
                if fail:
                    raise RuntimeError(f"job {i} failed")
                return i
            finally:
                state["running"] -= 1

        return run

    return (job(i, d, f) for i, (d, f) in enumerate(plan))


def fresh_state() -> dict:
    return {"running": 0, "peak": 0, "started": []}


def test_limit_holds_and_all_results_are_handled():
    state, handled = fresh_state(), []
    asyncio.run(run_bounded(make_jobs([(0.02, False)] * 10, state), 3, handled.append))
    assert sorted(handled) == list(range(10)) and state["peak"] == 3


def test_failure_stops_new_jobs_but_handles_those_in_flight():
    state, handled = fresh_state(), []
    plan = [(0.01, True), (0.1, False), (0.1, False), (0.0, False), (0.0, False)]
    with pytest.raises(RuntimeError, match="job 0 failed"):
        asyncio.run(run_bounded(make_jobs(plan, state), 3, handled.append))
    assert state["started"] == [0, 1, 2]  # jobs 3 and 4 never started
    assert sorted(handled) == [1, 2]  # the answers already in flight were kept


def test_may_launch_limits_what_is_started():
    state, handled = fresh_state(), []
    asyncio.run(
        run_bounded(make_jobs([(0.0, False)] * 10, state), 4, handled.append, lambda n: len(handled) + n < 5)
    )
    assert len(handled) == 5 and state["started"] == [0, 1, 2, 3, 4]


def test_concurrency_must_be_positive():
    with pytest.raises(ValueError):
        asyncio.run(run_bounded(iter([]), 0, print))
