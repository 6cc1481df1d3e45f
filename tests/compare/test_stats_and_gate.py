"""Bootstrap figures and gate expressions as functions."""

import numpy as np
import pytest

from loraforge.compare.gate import evaluate_gate, parse_gate
from loraforge.compare.stats import figure, index_matrix, macro_f1_of, mean_of
from loraforge.errors import LoraforgeError
from loraforge.evaluate.metrics import macro_f1


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    small = rng.random(40) < 0.7
    large = rng.random(4000) < 0.7
    f_small = figure(mean_of(small.astype(float))(index_matrix(40)))
    f_large = figure(mean_of(large.astype(float))(index_matrix(4000)))
    assert f_small.lo <= f_small.value <= f_small.hi
    assert f_large.hi - f_large.lo < (f_small.hi - f_small.lo) / 4
    assert f_large.lo < 0.7 < f_large.hi


def test_macro_f1_statistic_matches_the_evaluation_metric():
    labels = ["a", "b", "c"]
    refs = ["a", "b", "c", "a", "b", "c", "a", "a"]
    preds = ["a", "b", "x", "a", "c", "c", "b", "a"]  # "x" is outside the label set
    code = {label: i for i, label in enumerate(labels)}
    p = np.array([code.get(x, -1) for x in preds])
    r = np.array([code[x] for x in refs])
    value = macro_f1_of(p, r, 3)(index_matrix(len(refs)))[0]
    assert value == pytest.approx(macro_f1(preds, refs, labels))


def test_gate_binds_baseline_to_the_metric_on_its_left():
    cand = {"accuracy": 0.80, "win_rate": 0.55, "latency_p95_ms": 90}
    base = {"accuracy": 0.805, "latency_p95_ms": 400}
    assert evaluate_gate("accuracy>=baseline-0.01 and win_rate>=0.5", cand, base)
    assert not evaluate_gate("accuracy>=baseline", cand, base)
    assert evaluate_gate("latency_p95_ms < baseline.latency_p95_ms / 2 or accuracy > 0.9", cand, base)
    assert not evaluate_gate("not (accuracy > 0.5)", cand, base)


@pytest.mark.parametrize(
    "gate, message",
    [
        ("accurcy>=0.5", "unknown metric 'accurcy'"),
        ("accuracy>=", "not a valid expression"),
        ("__import__('os')", "not allowed"),
        ("accuracy >= 'x'", "not allowed"),
    ],
)
def test_bad_gates_are_refused_before_anything_runs(gate, message):
    with pytest.raises(LoraforgeError, match=message):
        parse_gate(gate)


def test_a_gate_on_an_unmeasured_metric_is_an_error_not_a_verdict():
    with pytest.raises(LoraforgeError, match="did not measure"):
        evaluate_gate("win_rate>=0.5", {"accuracy": 1.0}, {"accuracy": 0.5})
