"""Datasets from traffic: selection, feedback, dedupe, leak-free deterministic split, versions, export."""

import json
from datetime import timedelta

import pytest

from loraforge.curation.call_examples import input_hash
from loraforge.curation.datasets import (
    DatasetFilter,
    build_dataset,
    dataset_rows,
    export_dataset,
    get_dataset,
    list_datasets,
)
from loraforge.errors import DataError, LoraforgeError
from loraforge.store import Store
from loraforge.store.tables import utcnow
from tests.store.calls import chat_call, completion_call


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def last_outputs(path) -> list[str]:
    return [row["messages"][-1]["content"] for row in read_jsonl(path)]


@pytest.fixture
def traffic(store):
    """60 distinct questions of task `qa`, some repeated with other whitespace, plus noise."""
    records = [
        chat_call("qa", f"question number {i}", f"answer {i}", system="be brief", seq=i) for i in range(60)
    ]
    dupes = [
        chat_call("qa", f"  question   number {i} ", f"later answer {i}", system="be brief", seq=100 + i)
        for i in range(5)
    ]
    noise = [
        chat_call("other", "question number 1", "x", seq=200),
        chat_call("qa", "failed", "", status="error"),
    ]
    store.insert_calls(records + dupes + noise)
    return records, dupes


def test_build_dedupes_splits_without_leakage_and_writes_chat_jsonl(store, traffic, tmp_path):
    records, dupes = traffic
    result = build_dataset(store, "qa-ds", DatasetFilter("qa", dedupe=True, test_fraction=0.3), root=tmp_path)
    assert result.version == 1 and not result.reused
    c = result.counts
    assert (c["selected"], c["duplicates"], c["rows"]) == (65, 5, 60)
    assert c["train"] + c["test"] == 60 and 0 < c["test"] < 60
    train, test = read_jsonl(result.path / "train.jsonl"), read_jsonl(result.path / "test.jsonl")
    assert train[0]["messages"][0] == {"role": "system", "content": "be brief"}
    assert [m["role"] for m in train[0]["messages"]] == ["system", "user", "assistant"]
    # Duplicates: the newest occurrence (all unscored and uncorrected) is kept.
    outputs = last_outputs(result.path / "train.jsonl") + last_outputs(result.path / "test.jsonl")
    assert sorted(o for o in outputs if o.startswith("later")) == sorted(
        f"later answer {i}" for i in range(5)
    )
    assert "x" not in outputs and "" not in outputs  # other task and failed call excluded
    hashes = lambda rows: {input_hash(r["messages"][:-1]) for r in rows}  # noqa: E731
    assert hashes(train).isdisjoint(hashes(test))
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["filter"]["task"] == "qa" and manifest["content_hash"] == result.content_hash
    assert manifest["counts"]["train"] == len(train)
    provenance = dataset_rows(store, get_dataset(store, "qa-ds").id)
    assert {r.call_id for r in provenance} <= {r["id"] for r in records + dupes}
    assert {r.split for r in provenance} == {"train", "test"}


def test_without_dedupe_equal_inputs_still_share_a_split(store, traffic, tmp_path):
    result = build_dataset(store, "all", DatasetFilter("qa", test_fraction=0.5), root=tmp_path)
    assert result.counts["rows"] == 65
    rows = dataset_rows(store, get_dataset(store, "all").id)
    split_by_hash: dict[str, set[str]] = {}
    for row in rows:
        split_by_hash.setdefault(row.input_hash, set()).add(row.split)
    assert all(len(splits) == 1 for splits in split_by_hash.values())
    assert len(split_by_hash) == 60


def test_feedback_drops_low_scores_and_applies_corrections(store, tmp_path):
    good, bad, fixed, unscored = (chat_call("t", f"q{i}", f"a{i}", seq=i) for i in range(4))
    store.insert_calls([good, bad, fixed, unscored])
    store.add_feedback(good["id"], score=0.9)
    store.add_feedback(bad["id"], score=0.1)
    store.add_feedback(fixed["id"], score=0.2)
    store.add_feedback(fixed["id"], score=0.8, corrected_output="a2 corrected")  # newest feedback wins
    filt = DatasetFilter("t", min_score=0.5, use_corrections=True, test_fraction=0.0)
    result = build_dataset(store, "fb", filt, root=tmp_path)
    assert last_outputs(result.path / "train.jsonl") == ["a0", "a2 corrected", "a3"]
    assert (result.counts["low_score"], result.counts["corrected"]) == (1, 1)
    corrected = {r.call_id: r.corrected for r in dataset_rows(store, get_dataset(store, "fb").id)}
    assert corrected == {good["id"]: False, fixed["id"]: True, unscored["id"]: False}

    plain = build_dataset(store, "fb-plain", DatasetFilter("t", test_fraction=0.0), root=tmp_path)
    assert last_outputs(plain.path / "train.jsonl") == ["a0", "a1", "a2", "a3"]


def test_rebuild_without_new_data_reuses_the_version(store, traffic, tmp_path):
    filt = DatasetFilter("qa", dedupe=True, test_fraction=0.2)
    first = build_dataset(store, "ds", filt, root=tmp_path)
    again = build_dataset(store, "ds", filt, root=tmp_path)
    assert (again.version, again.reused, again.content_hash) == (1, True, first.content_hash)
    store.insert_calls([chat_call("qa", "a brand new question", "new", seq=500)])
    newer = build_dataset(store, "ds", filt, root=tmp_path)
    assert newer.version == 2 and newer.content_hash != first.content_hash
    assert (first.path / "train.jsonl").exists()  # old versions stay intact
    assert [d.version for d in list_datasets(store)] == [1, 2]
    assert get_dataset(store, "ds").version == 2 and get_dataset(store, "ds", 1).version == 1


def test_since_filter_and_completions_prompts(store, tmp_path):
    old = chat_call("t", "old", "o", at=utcnow() - timedelta(days=30))
    new = completion_call("t", "complete this", " done", seq=1)
    store.insert_calls([old, new])
    since = (utcnow() - timedelta(days=7)).date().isoformat()
    result = build_dataset(store, "recent", DatasetFilter("t", since=since, test_fraction=0.0), root=tmp_path)
    assert read_jsonl(result.path / "train.jsonl") == [
        {
            "messages": [
                {"role": "user", "content": "complete this"},
                {"role": "assistant", "content": " done"},
            ]
        }
    ]


def test_export_copies_the_files(store, traffic, tmp_path):
    build_dataset(store, "ex", DatasetFilter("qa"), root=tmp_path / "home")
    out = tmp_path / "out"
    copied = export_dataset(get_dataset(store, "ex"), out)
    assert sorted(p.name for p in copied) == ["manifest.json", "test.jsonl", "train.jsonl"]
    with pytest.raises(LoraforgeError, match="already exists"):
        export_dataset(get_dataset(store, "ex"), out)
    export_dataset(get_dataset(store, "ex"), out, force=True)


def test_user_mistakes_are_loraforge_errors(store, traffic, tmp_path):
    with pytest.raises(DataError, match="no usable"):
        build_dataset(store, "none", DatasetFilter("missing-task"), root=tmp_path)
    with pytest.raises(LoraforgeError, match="--test-fraction"):
        build_dataset(store, "x", DatasetFilter("qa", test_fraction=1.5), root=tmp_path)
    with pytest.raises(LoraforgeError, match="--since"):
        build_dataset(store, "x", DatasetFilter("qa", since="last tuesday"), root=tmp_path)
    with pytest.raises(LoraforgeError, match="--name"):
        build_dataset(store, "../escape", DatasetFilter("qa"), root=tmp_path)
    with pytest.raises(LoraforgeError, match="no dataset"):
        get_dataset(store, "nope")


def test_since_honours_utc_offsets():
    from loraforge.curation.datasets import parse_since

    assert parse_since("2026-01-31T12:00+02:00") == parse_since("2026-01-31T10:00")
    assert parse_since("2026-01-31") == parse_since("2026-01-31T00:00:00Z")


def test_a_build_streams_calls_instead_of_loading_them_all(store, tmp_path, monkeypatch):
    """Peak memory of a build stays far below the size of the calls' bodies (read in batches)."""
    import tracemalloc

    from loraforge.curation import rows

    monkeypatch.setattr(rows, "BATCH_ROWS", 20)

    big = "word " * 20_000  # 100 KB per output
    store.insert_calls([chat_call("bulk", f"q{i}", f"{i} {big}", seq=i) for i in range(300)])  # 30 MB
    tracemalloc.start()
    try:
        result = build_dataset(store, "bulk", DatasetFilter("bulk", dedupe=True), root=tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.counts["rows"] == 300
    assert peak < 15_000_000, f"peak {peak / 1e6:.1f} MB for 30 MB of calls"


def test_since_takes_a_span_back_from_now():
    from datetime import timedelta

    from loraforge.curation.datasets import parse_since
    from loraforge.errors import LoraforgeError
    from loraforge.store.tables import utcnow

    assert abs(utcnow() - timedelta(days=7) - parse_since("7d")) < timedelta(seconds=5)
    assert abs(utcnow() - timedelta(minutes=30) - parse_since("30m")) < timedelta(seconds=5)
    with pytest.raises(LoraforgeError, match="7d, 12h or 30m"):
        parse_since("7 days")


def test_reviewed_only_keeps_what_a_person_corrected_or_scored_well(tmp_path):
    from loraforge.curation.rows import count_candidates

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    calls = [chat_call("t", f"question {i}", f"answer {i}", seq=i) for i in range(6)]
    store.insert_calls(calls)
    store.add_feedback(calls[0]["id"], score=0.0, corrected_output="fixed 0")  # a wrong answer, corrected
    store.add_feedback(calls[1]["id"], score=1.0)
    store.add_feedback(calls[2]["id"], score=0.2)  # reviewed, and bad
    filt = DatasetFilter("t", min_score=1.0, use_corrections=True, reviewed_only=True, test_fraction=0.0)
    assert count_candidates(store, filt) == 2
    built = build_dataset(store, "rev", filt, root=tmp_path / "ds")
    outputs = [json.loads(line)["messages"][-1]["content"] for line in (built.path / "train.jsonl").open()]
    assert outputs == ["fixed 0", "answer 1"]
    assert built.counts["unreviewed"] == 3 and built.counts["low_score"] == 1
