"""Full turns of the flywheel on real parts (tiny model, scripted general model): trigger, dataset, train,
register, compare, shadow, canary, full; a failed gate; rollback on live regressions."""

from loraforge.curation.datasets import list_datasets
from loraforge.flywheel.records import list_runs, start_run, update_run
from loraforge.flywheel.turn import run_once
from loraforge.store.comparisons import list_comparisons
from loraforge.store.routes import current_routes, route_history
from tests.flywheel.conftest import TASK
from tests.store.calls import chat_call


def test_trigger_not_met_does_nothing(loop):
    loop.seed(10)
    report = run_once(loop.store, loop.policy())
    assert report.outcome == "idle"
    assert "10 new usable examples" in report.message and "needs 20" in report.message
    assert list_runs(loop.store) == [] and list_datasets(loop.store) == []


def test_unreviewed_calls_do_not_count(loop):
    loop.store.insert_calls([chat_call(TASK, f"q{i}", "unsure", seq=i) for i in range(30)])
    assert run_once(loop.store, loop.policy()).outcome == "idle"


def test_a_full_turn_goes_from_data_to_full_traffic(loop):
    loop.seed(40)
    policy = loop.policy()
    report = run_once(loop.store, policy)
    assert report.outcome == "waiting" and report.message.startswith("shadow: 0/3 calls"), report
    [run] = list_runs(loop.store)
    assert (run.step, run.dataset_version, run.adapter) == ("shadow", 1, "intents-v1")
    assert [d.version for d in list_datasets(loop.store)] == [1]
    [comparison] = list_comparisons(loop.store, TASK)
    assert run.comparison_id == comparison.id and comparison.gate_passed
    assert comparison.baseline == "general" and comparison.candidate == "adapter:intents-v1"

    loop.wait_for_route(run.route_seq)
    assert set(loop.traffic(4, "shadow")) == {"general"}  # the adapter only mirrors
    _wait_for_shadows(loop, 3)
    report = run_once(loop.store, policy)
    assert report.outcome == "waiting" and report.message.startswith("canary:"), report
    run = list_runs(loop.store)[0]
    loop.wait_for_route(run.route_seq)
    served = loop.traffic(16, "canary")
    assert "adapter:intents-v1" in served and "general" in served
    report = run_once(loop.store, policy)
    assert report.outcome == "done", report
    route = current_routes(loop.store)[TASK]
    assert (route.stage, route.adapter) == ("full", "intents-v1")
    changes = route_history(loop.store, TASK)
    assert [(c.stage, c.actor) for c in changes] == [("shadow", "flywheel"), ("canary", "flywheel"),
                                                    ("full", "flywheel")]  # fmt: skip
    [run] = list_runs(loop.store)
    steps = [e["step"] for e in run.events]
    assert steps[:4] == ["dataset", "train", "register", "compare"] and steps[-1] == "full"
    # Nothing new: the next round starts no turn.
    assert run_once(loop.store, policy).outcome == "idle"
    assert len(list_runs(loop.store)) == 1 and len(list_datasets(loop.store)) == 1

    # A later turn that stopped (say, at its gate) does not end the watch over the promoted adapter.
    later = start_run(loop.store, TASK, "compare")
    update_run(loop.store, later, "gate failed", status="stopped", reason="gate failed")
    # Live regression after promotion: the adapter's calls start falling back -> automatic rollback.
    fallback = [
        _served(chat_call(TASK, f"late {i}", "unsure", seq=1000 + i), "fallback", "full") for i in range(5)
    ]
    loop.store.insert_calls(fallback)
    report = run_once(loop.store, policy)
    assert report.outcome == "rolled_back" and "fallback rate" in report.message, report
    assert TASK not in current_routes(loop.store)  # back to the general model, as before the turn
    last = route_history(loop.store, TASK)[-1]
    assert (last.action, last.actor, last.stage) == ("rollback", "flywheel", "off")
    assert [r.status for r in list_runs(loop.store)] == ["stopped", "rolled_back"]


def test_a_failed_gate_stops_the_turn_and_leaves_the_route(loop):
    loop.seed(24)
    report = run_once(loop.store, loop.policy(gate="exact_match >= baseline + 2"))
    assert report.outcome == "stopped" and "gate `exact_match >= baseline + 2` failed" in report.message
    [run] = list_runs(loop.store)
    assert run.status == "stopped" and run.comparison_id is not None
    assert route_history(loop.store, TASK) == []
    # The same data never trains again: a new round finds no new examples.
    assert run_once(loop.store, loop.policy()).outcome == "idle"


def test_a_canary_over_the_limits_is_rolled_back(loop):
    loop.seed(24)
    policy = loop.policy()
    run_once(loop.store, policy)
    run = list_runs(loop.store)[0]
    records = [
        _served(chat_call(TASK, f"s{i}", "x", seq=2000 + i), "adapter:intents-v1", "shadow") for i in range(3)
    ]
    for record in records:
        record["shadow_of"] = "call_primary"
        record["fallback_reason"] = "invalid: not a label"
    loop.store.insert_calls(records)
    report = run_once(loop.store, policy)
    assert report.outcome == "rolled_back" and "shadow: fallback rate" in report.message, report
    assert TASK not in current_routes(loop.store)
    assert list_runs(loop.store)[0].id == run.id


def _served(record: dict, served_by: str, stage: str) -> dict:
    from loraforge.store.tables import utcnow

    record.update(served_by=served_by, route_stage=stage, time=utcnow())
    return record


def _wait_for_shadows(loop, n: int) -> None:
    import time

    deadline = time.monotonic() + 30
    while sum(1 for c in loop.store.calls(task=TASK) if c.shadow_of) < n:
        assert time.monotonic() < deadline, "shadow calls were not recorded"
        time.sleep(0.1)
