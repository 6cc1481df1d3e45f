"""Scoring functions for predictions against references; each returns plain floats in [0, 1]."""

import json
import re
from collections.abc import Callable, Sequence

from loraforge.config.tasks import DEFAULT_METRICS


def normalize(text: str) -> str:
    return " ".join(text.strip().split())


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not references:
        return 0.0
    return sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)) / len(
        references
    )


exact_match = accuracy


def macro_f1(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None = None
) -> float:
    """Unweighted mean of per-class F1 over the label set (or the reference labels when none is given).

    A prediction outside the label set is a miss for its reference class and a hit for no class.
    """
    classes = list(dict.fromkeys(labels if labels else [normalize(r) for r in references]))
    preds = [normalize(p) for p in predictions]
    refs = [normalize(r) for r in references]
    scores = []
    for label in classes:
        tp = sum(p == label and r == label for p, r in zip(preds, refs, strict=True))
        fp = sum(p == label and r != label for p, r in zip(preds, refs, strict=True))
        fn = sum(p != label and r == label for p, r in zip(preds, refs, strict=True))
        if tp + fp + fn == 0:
            continue  # a class absent from both sides says nothing about the model
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


def out_of_label_rate(predictions: Sequence[str], labels: Sequence[str]) -> float:
    allowed = {normalize(label) for label in labels}
    return sum(normalize(p) not in allowed for p in predictions) / len(predictions) if predictions else 0.0


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over whitespace tokens (lower-cased)."""
    total = 0.0
    for prediction, reference in zip(predictions, references, strict=True):
        p, r = prediction.lower().split(), reference.lower().split()
        lcs = _lcs_length(p, r)
        if lcs:
            precision, recall = lcs / len(p), lcs / len(r)
            total += 2 * precision * recall / (precision + recall)
    return total / len(references) if references else 0.0


SLOT = re.compile(r"(\w+)\[([^\]]*)\]")
DIALOGUE_ACT = re.compile(r"^\s*(\w+)\s*\(")


def parse_meaning_representation(text: str) -> set[tuple[str, str]]:
    """`inform(name[X], rating[good])` -> {('act', 'inform'), ('name', 'x'), ('rating', 'good')}."""
    items = {(slot, value.strip().lower()) for slot, value in SLOT.findall(text)}
    act = DIALOGUE_ACT.match(text)
    if act:
        items.add(("act", act.group(1)))
    return items


def slot_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Micro F1 over (slot, value) pairs, the dialogue act counting as one slot."""
    tp = fp = fn = 0
    for prediction, reference in zip(predictions, references, strict=True):
        p, r = parse_meaning_representation(prediction), parse_meaning_representation(reference)
        tp += len(p & r)
        fp += len(p - r)
        fn += len(r - p)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def _try_json(text: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None


def valid_json_rate(predictions: Sequence[str]) -> float:
    return sum(_try_json(p) is not None for p in predictions) / len(predictions) if predictions else 0.0


def field_accuracy(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """For each top-level field of the reference objects, the share of rows whose prediction has it equal."""
    hits: dict[str, int] = {}
    counts: dict[str, int] = {}
    for prediction, reference in zip(predictions, references, strict=True):
        gold = _try_json(reference)
        if not isinstance(gold, dict):
            continue
        guess = _try_json(prediction)
        for key, value in gold.items():
            counts[key] = counts.get(key, 0) + 1
            hits[key] = hits.get(key, 0) + int(isinstance(guess, dict) and guess.get(key) == value)
    return {key: hits[key] / counts[key] for key in counts}


def compute_metrics(
    task: str,
    names: Sequence[str] | None,
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None = None,
) -> dict[str, float | dict[str, float]]:
    """Compute the named metrics (or the task's defaults)."""
    calculators: dict[str, Callable[[], float | dict[str, float]]] = {
        "accuracy": lambda: accuracy(predictions, references),
        "exact_match": lambda: exact_match(predictions, references),
        "macro_f1": lambda: macro_f1(predictions, references, labels),
        "out_of_label_rate": lambda: out_of_label_rate(predictions, labels or list(set(references))),
        "rouge_l": lambda: rouge_l(predictions, references),
        "slot_f1": lambda: slot_f1(predictions, references),
        "valid_json_rate": lambda: valid_json_rate(predictions),
        "field_accuracy": lambda: field_accuracy(predictions, references),
    }
    return {name: calculators[name]() for name in names or DEFAULT_METRICS[task]}
