"""The flywheel's records on SQLite and PostgreSQL: one lock holder per task (a crashed holder's lease runs
out), turns with their event log."""

import time

import pytest

from loraforge.flywheel.records import (
    RUNNING,
    active_run,
    list_runs,
    release_lock,
    start_run,
    task_lock,
    try_lock,
    update_run,
)
from loraforge.store import Store
from tests.store.backends import BACKENDS, store_url_for


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    handle = Store(store_url_for(request.param, tmp_path))
    yield handle
    handle.close()


def test_one_holder_per_task_until_its_lease_runs_out(store):
    assert try_lock(store, "a", "one", lease_s=0.5)
    assert not try_lock(store, "a", "two", lease_s=0.5)
    assert try_lock(store, "b", "two", lease_s=0.5)  # tasks lock independently
    assert try_lock(store, "a", "one", lease_s=0.5)  # the holder renews
    time.sleep(0.7)  # "one" stopped renewing, as a killed process would
    assert try_lock(store, "a", "two", lease_s=0.5)
    release_lock(store, "a", "one")  # not the holder any more: nothing happens
    assert not try_lock(store, "a", "three", lease_s=0.5)


def test_the_lock_is_renewed_while_held_and_freed_after(store):
    with task_lock(store, "a", lease_s=0.6) as held:
        assert held
        time.sleep(1.0)  # longer than the lease: the renewer keeps it
        assert not try_lock(store, "a", "other", lease_s=0.6)
        with task_lock(store, "a", lease_s=0.6) as second:
            assert not second
    assert try_lock(store, "a", "other", lease_s=0.6)


def test_a_turn_logs_each_step_under_the_step_that_did_it(store):
    run = start_run(store, "a", "dataset")
    run = update_run(store, run, "built v1", step="train", dataset_name="a-flywheel", dataset_version=1)
    run = update_run(store, run, "trained", step="register")
    assert active_run(store, "a").id == run.id and run.status == RUNNING
    assert [(e["step"], e["message"]) for e in run.events] == [("dataset", "built v1"), ("train", "trained")]
    update_run(store, run, "stop", status="stopped", reason="why")
    assert active_run(store, "a") is None and list_runs(store, "a")[0].reason == "why"
