"""The metric names of each evaluation task: part of the config's vocabulary (`evaluation.metrics`), so they
live here and `evaluate.metrics` computes them, rather than the config reaching up into `evaluate`."""

METRICS_BY_TASK: dict[str, list[str]] = {
    "classification": ["accuracy", "macro_f1", "out_of_label_rate"],
    "generation": ["exact_match", "rouge_l", "slot_f1"],
    "json": ["valid_json_rate", "field_accuracy", "exact_match"],
}
DEFAULT_METRICS: dict[str, list[str]] = {
    "classification": ["accuracy", "macro_f1", "out_of_label_rate"],
    "generation": ["exact_match", "rouge_l"],
    "json": ["valid_json_rate", "field_accuracy"],
}
# Classification with a fallback label (out of scope): answer it when the chosen label's probability is below
# this. Chosen on a Banking77 split with labels held out as out of scope (benchmarks/init_transfer.py).
DEFAULT_FALLBACK_THRESHOLD = 0.5


def fallback_or(label: str, probability: float, fallback: str, threshold: float) -> str:
    """A classification's answer with a fallback label: the model's `label`, unless it gave it a
    `probability` below `threshold` (evaluation and the serving API's `guided_choice_fallback` both)."""
    return label if probability >= threshold else fallback
