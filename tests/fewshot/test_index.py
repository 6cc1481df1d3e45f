"""Retrieval: the most similar examples first, from rows, a dataset file or the store's good calls."""

import json

import pytest

from loraforge.errors import DataError, LoraforgeError
from loraforge.fewshot import ExampleIndex, FewShotExample
from tests.store.calls import chat_call


def ex(text: str, label: str) -> FewShotExample:
    return FewShotExample.of(
        [{"role": "system", "content": "Classify."}, {"role": "user", "content": text}], label
    )


ROWS = [
    ex("my card has not arrived yet", "card_arrival"),
    ex("how do I top up with a bank transfer", "top_up"),
    ex("I lost my card on the train", "lost_card"),
    ex("when will my new card arrive", "card_arrival"),
    ex("exchange rate for euros", "exchange_rate"),
]


def test_top_k_returns_the_most_similar_examples_first():
    index = ExampleIndex.from_rows(ROWS)
    assert len(index) == 5
    top = index.top_k(
        [
            {"role": "system", "content": "Classify."},
            {"role": "user", "content": "when will my card arrive? not arrived yet"},
        ],
        2,
    )
    assert [e.output for e in top] == ["card_arrival", "card_arrival"]
    assert index.top_k("top up by bank transfer", 1)[0].output == "top_up"


def test_the_system_prompt_does_not_count_and_unmatched_queries_still_get_k_examples():
    index = ExampleIndex.from_rows(ROWS)
    # "Classify." is in every example's system prompt: a query sharing only that matches nothing.
    top = index.top_k([{"role": "system", "content": "Classify."}, {"role": "user", "content": "zzz"}], 3)
    assert top == ROWS[:3]  # index order: the format is still shown
    assert index.top_k("lost card", 10)[0].output == "lost_card" and len(index.top_k("lost card", 10)) == 5
    assert index.top_k("lost card", 0) == []


def test_empty_index_answers_nothing():
    assert len(ExampleIndex.from_rows([])) == 0
    assert ExampleIndex.from_rows([]).top_k("anything", 8) == []
    assert ExampleIndex.from_rows([ex("a", "b")]).top_k("a", 8) == [ex("a", "b")]  # no indexable word


def test_from_dataset_reads_a_train_file_and_dedupes(tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [
        {
            "messages": [
                {"role": "user", "content": "lost my card"},
                {"role": "assistant", "content": "lost_card"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "lost  my card"},
                {"role": "assistant", "content": "other"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "rate?"},
                {"role": "assistant", "content": "exchange_rate"},
            ]
        },
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    index = ExampleIndex.from_dataset(path)
    assert len(index) == 2 and index.top_k("card", 1)[0].output == "lost_card"
    path.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with pytest.raises(DataError, match="train.jsonl:1"):
        ExampleIndex.from_dataset(path)


def test_from_store_keeps_corrected_and_well_scored_calls_only(store):
    records = [
        chat_call("intent", "where is my card", "wrong", seq=1),
        chat_call("intent", "I lost my card", "lost_card", seq=2),
        chat_call("intent", "my card is lost", "refund", seq=3),
        chat_call("intent", "card never came", "card_arrival", seq=4),  # no feedback
        chat_call("other", "card", "x", seq=5),
    ]
    store.insert_calls(records)
    corrected, good, bad = (r["id"] for r in records[:3])
    store.add_feedback(corrected, score=1, corrected_output="card_arrival")
    store.add_feedback(good, score=5)
    store.add_feedback(bad, score=1)
    only_corrections = ExampleIndex.from_store(store, "intent")
    assert [(e.call_id, e.output) for e in only_corrections.examples] == [(corrected, "card_arrival")]
    scored = ExampleIndex.from_store(store, "intent", min_score=4)
    assert {e.call_id for e in scored.examples} == {corrected, good}
    assert scored.top_k("lost card", 1)[0].call_id == good
    raw = ExampleIndex.from_store(store, "intent", min_score=4, use_corrections=False)
    assert [e.output for e in raw.examples] == ["lost_card"]  # the corrected call scored 1: not good
    assert len(ExampleIndex.from_store(store, "intent", min_score=0, limit=2)) == 2
    with pytest.raises(LoraforgeError, match="min_score"):
        ExampleIndex.from_store(store, "intent", use_corrections=False)
