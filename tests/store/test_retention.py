"""`loraforge store prune`: old calls and their feedback go, recent ones and each task's newest N stay, and a
call a dataset version was built from is never deleted."""

import sys
from datetime import timedelta

import pytest

from loraforge.curation.datasets import DatasetFilter, build_dataset
from loraforge.errors import ConfigError
from loraforge.store.retention import prune_calls
from loraforge.store.tables import utcnow
from tests.store.calls import chat_call


def _traffic(store, days_old: int, count: int, task: str = "qa"):
    at = utcnow() - timedelta(days=days_old)
    calls = [
        chat_call(task, f"{task} q{days_old}-{i}", "a", at=at + timedelta(seconds=i)) for i in range(count)
    ]
    store.insert_calls(calls)
    return calls


def test_prune_by_age_keeps_recent_calls_and_drops_old_feedback(store):
    old, recent = _traffic(store, 40, 5), _traffic(store, 1, 3)
    store.add_feedback(old[0]["id"], score=5)
    assert prune_calls(store, keep_days=30, dry_run=True).deleted == 0 and store.count_calls() == 8
    result = prune_calls(store, keep_days=30)
    assert (result.matched, result.referenced, result.deleted) == (5, 0, 5)
    assert {c.id for c in store.calls()} == {c["id"] for c in recent}
    assert store.feedback_for(old[0]["id"]) == []


def test_both_bounds_keep_the_newest_rows_of_each_task(store):
    qa_old, other_old = _traffic(store, 40, 5), _traffic(store, 50, 4, task="other")
    result = prune_calls(store, keep_days=30, keep_rows=3)
    assert result.deleted == 2 + 1  # each task keeps its 3 newest, though all are older than 30 days
    kept = {c.id for c in store.calls()}
    assert kept == {c["id"] for c in qa_old[-3:] + other_old[-3:]}
    assert prune_calls(store, task="other", keep_rows=1).deleted == 2  # --task confines it
    assert len(store.calls("qa")) == 3


def test_calls_a_dataset_uses_are_kept(store, tmp_path):
    old = _traffic(store, 40, 6)
    build_dataset(store, "qa-v1", DatasetFilter("qa", test_fraction=0.0), root=tmp_path)
    _traffic(store, 45, 2)  # older still, in no dataset
    result = prune_calls(store, keep_days=30)
    assert (result.matched, result.referenced, result.deleted) == (8, 6, 2)
    assert {c.id for c in store.calls()} == {c["id"] for c in old}


def test_mistakes_are_named(store, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="--keep-days, --keep-rows or both"):
        prune_calls(store)
    with pytest.raises(ConfigError, match=">= 0"):
        prune_calls(store, keep_rows=-1)
    from loraforge.cli.main import main

    monkeypatch.setattr(sys, "argv", ["loraforge", "store", "prune", "--store", store.url])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
