import pytest

from loraforge.evaluate.metrics import (
    accuracy,
    compute_metrics,
    field_accuracy,
    macro_f1,
    out_of_label_rate,
    parse_meaning_representation,
    rouge_l,
    slot_f1,
    valid_json_rate,
)


def test_classification_metrics_on_hand_made_inputs():
    refs = ["a", "a", "b", "c"]
    preds = ["a", "b", "b", "zzz"]
    assert accuracy(preds, refs) == 0.5
    # a: tp1 fp0 fn1 -> 2/3 ; b: tp1 fp1 fn0 -> 2/3 ; c: tp0 fp0 fn1 -> 0
    assert macro_f1(preds, refs, labels=["a", "b", "c"]) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert out_of_label_rate(preds, ["a", "b", "c"]) == 0.25
    assert accuracy([" a  "], ["a"]) == 1.0


def test_rouge_l():
    assert rouge_l(["the cat sat"], ["the cat sat"]) == 1.0
    # LCS("the cat", "the big cat") = 2 -> P = 1, R = 2/3 -> F = 0.8
    assert rouge_l(["the cat"], ["the big cat"]) == pytest.approx(0.8)
    assert rouge_l(["dog"], ["cat"]) == 0.0


def test_slot_f1_and_parsing():
    ref = "inform(name[Portal 2], rating[excellent], genres[puzzle])"
    assert parse_meaning_representation(ref) == {
        ("act", "inform"),
        ("name", "portal 2"),
        ("rating", "excellent"),
        ("genres", "puzzle"),
    }
    pred = "inform(name[Portal 2], rating[poor])"
    # tp = act + name = 2, fp = rating[poor] = 1, fn = rating[excellent] + genres = 2 -> 4 / 7
    assert slot_f1([pred], [ref]) == pytest.approx(4 / 7)


def test_json_metrics():
    preds = ['{"a": 1, "b": "x"}', "not json", '{"a": 2}']
    refs = ['{"a": 1, "b": "x"}', '{"a": 1, "b": "y"}', '{"a": 2, "b": "z"}']
    assert valid_json_rate(preds) == pytest.approx(2 / 3)
    assert field_accuracy(preds, refs) == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 3)}


def test_compute_metrics_uses_task_defaults():
    result = compute_metrics("classification", None, ["a"], ["a"], labels=["a", "b"])
    assert result == {"accuracy": 1.0, "macro_f1": 1.0, "out_of_label_rate": 0.0}
