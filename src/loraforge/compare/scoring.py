"""Metrics by task kind for both sides of a comparison, each with a paired 95% bootstrap interval.

classification: accuracy, macro_f1 (against the reference), invalid_rate (answers outside the label set),
agreement (with the baseline); json: valid_json_rate, schema_valid_rate, field_accuracy, exact_match; text:
exact_match, rouge_l, and win_rate from the judge. Every kind: error_rate, latency_p50_ms, latency_p95_ms,
cost_per_1k_usd. Reference-based metrics use the items that have a reference (all of a dataset's).
"""

import json
from typing import Any

import jsonschema
import numpy as np

from loraforge.compare.items import Item
from loraforge.compare.stats import Statistic, figure, index_matrix, macro_f1_of, mean_of, percentile_of
from loraforge.evaluate.metrics import normalize, rouge_l
from loraforge.store.output_spec import OutputSpec

Metrics = dict[str, dict[str, Any]]


def score(
    items: list[Item],
    spec: OutputSpec,
    cost_per_call: dict[str, np.ndarray | None],
    judge_outcomes: list[float] | None = None,
) -> Metrics:
    """{metric: {"candidate": Figure, "baseline": Figure | None, "delta": Figure | None}}."""
    metrics: Metrics = {}
    texts = {side: [_text(item, side) for item in items] for side in ("candidate", "baseline")}
    refs = [i for i, item in enumerate(items) if item.reference is not None]
    idx_all = index_matrix(len(items))
    idx_ref = index_matrix(len(refs)) if refs else None
    ref_texts = [items[i].reference or "" for i in refs]

    def paired(name: str, stat: dict[str, Statistic], idx: np.ndarray) -> None:
        c, b = stat["candidate"](idx), stat["baseline"](idx)
        metrics[name] = {"candidate": figure(c), "baseline": figure(b), "delta": figure(c - b)}

    def per_item(name: str, fn, idx: np.ndarray | None, subset: list[int] | None = None) -> None:
        if idx is None:
            return
        stat = {}
        for side in texts:
            values = texts[side] if subset is None else [texts[side][i] for i in subset]
            stat[side] = mean_of(np.array([fn(v, k) for k, v in enumerate(values)], dtype=float))
        paired(name, stat, idx)

    if spec.kind == "classification":
        _classification(spec, texts, refs, ref_texts, idx_all, idx_ref, paired)
    elif spec.kind == "json":
        per_item("valid_json_rate", lambda t, _: _parses(t), idx_all)
        if spec.schema is not None:
            per_item("schema_valid_rate", lambda t, _: _meets(t, spec.schema), idx_all)
        per_item("field_accuracy", lambda t, k: _fields(t, ref_texts[k]), idx_ref, refs)
        per_item("exact_match", lambda t, k: float(normalize(t) == normalize(ref_texts[k])), idx_ref, refs)
    else:
        per_item("exact_match", lambda t, k: float(normalize(t) == normalize(ref_texts[k])), idx_ref, refs)
        per_item("rouge_l", lambda t, k: rouge_l([t], [ref_texts[k]]), idx_ref, refs)
    if spec.kind != "text" or judge_outcomes is None:
        agree = np.array([normalize(c) == normalize(b) for c, b in zip(*texts.values(), strict=True)], float)
        metrics["agreement"] = {"candidate": figure(mean_of(agree)(idx_all)), "baseline": None, "delta": None}
    if judge_outcomes is not None:
        outcomes = mean_of(np.array(judge_outcomes, dtype=float))(idx_all)
        metrics["win_rate"] = {"candidate": figure(outcomes), "baseline": None, "delta": None}

    answers = {side: [getattr(item, side) for item in items] for side in texts}
    paired(
        "error_rate",
        {s: mean_of(np.array([a.text is None for a in answers[s]], float)) for s in texts},
        idx_all,
    )
    latency = {s: np.array([a.latency_ms for a in answers[s]], float) for s in texts}
    paired("latency_p50_ms", {s: percentile_of(latency[s], 50) for s in texts}, idx_all)
    paired("latency_p95_ms", {s: percentile_of(latency[s], 95) for s in texts}, idx_all)
    if all(cost_per_call.get(s) is not None for s in texts):
        paired("cost_per_1k_usd", {s: mean_of(cost_per_call[s] * 1000) for s in texts}, idx_all)
    return metrics


def _classification(spec, texts, refs, ref_texts, idx_all, idx_ref, paired) -> None:
    labels = [normalize(label) for label in spec.labels] or sorted({normalize(r) for r in ref_texts})
    codes = {label: i for i, label in enumerate(labels)}
    for ref in ref_texts:  # a reference outside the label set is still a class of the test
        codes.setdefault(normalize(ref), len(codes))
    known = set(labels)
    pred = {
        s: np.array([codes.get(normalize(t), -1) if normalize(t) in known else -1 for t in texts[s]])
        for s in texts
    }
    paired("invalid_rate", {s: mean_of((pred[s] == -1).astype(float)) for s in texts}, idx_all)
    if idx_ref is None:
        return
    ref_codes = np.array([codes[normalize(r)] for r in ref_texts])
    sub = {s: pred[s][refs] for s in texts}
    paired("accuracy", {s: mean_of((sub[s] == ref_codes).astype(float)) for s in texts}, idx_ref)
    paired("macro_f1", {s: macro_f1_of(sub[s], ref_codes, len(codes)) for s in texts}, idx_ref)


def _text(item: Item, side: str) -> str:
    answer = getattr(item, side)
    return answer.text if answer is not None and answer.text is not None else ""


def _load(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _INVALID


_INVALID = object()


def _parses(text: str) -> float:
    return float(_load(text) is not _INVALID)


def _meets(text: str, schema: dict[str, Any]) -> float:
    value = _load(text)
    return float(value is not _INVALID and jsonschema.Draft202012Validator(schema).is_valid(value))


def _fields(text: str, reference: str) -> float:
    """Share of the reference object's top-level fields the answer has equal (0 for an unparsable answer)."""
    gold, guess = _load(reference), _load(text)
    if not isinstance(gold, dict) or not gold:
        return float(guess == gold)
    if not isinstance(guess, dict):
        return 0.0
    return sum(guess.get(key, _INVALID) == value for key, value in gold.items()) / len(gold)
