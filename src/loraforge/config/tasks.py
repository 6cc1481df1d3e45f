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
# Classification with a fallback label (out of scope), decoded labels: answer it when the chosen label's
# probability is below this. Chosen on a Banking77 split with labels held out as out of scope
# (benchmarks/init_transfer.py).
DEFAULT_FALLBACK_THRESHOLD = 0.5
# The same with the nearest-example classifier: the fallback label's training rows count this much more
# similar (cosine), so a row takes another label only when it is clearly nearer that label's examples.
# Chosen on validation rows of that split with an adapter trained as `init` trains one (prototype loss:
# accuracy plateaus from 0.14 to 0.25; README "Fine-tuning"). With the LM loss alone cosines bunch closer
# and 0.05-0.10 was best: set `fallback_margin` for such an adapter.
DEFAULT_FALLBACK_MARGIN = 0.2


def fallback_or(label: str, probability: float, fallback: str, threshold: float) -> str:
    """A classification's answer with a fallback label: the model's `label`, unless it gave it a
    `probability` below `threshold` (evaluation and the serving API's `guided_choice_fallback` both)."""
    return label if probability >= threshold else fallback


def fallback_rule(
    classifier: str, threshold: float | None, margin: float | None
) -> tuple[float | None, float | None]:
    """The fallback's (probability threshold, margin) as a classifier applies them, from what was asked
    (None: not given). `decode` judges the decoded label's probability (by default under
    DEFAULT_FALLBACK_THRESHOLD) and has no margin; `nearest` judges the margin (default
    DEFAULT_FALLBACK_MARGIN), and the decoded probability too only where a threshold is given. ValueError for
    a margin asked of `decode`."""
    if classifier == "decode":
        if margin is not None:
            raise ValueError("a fallback margin needs the nearest-example classifier")
        return (DEFAULT_FALLBACK_THRESHOLD if threshold is None else threshold), None
    return threshold, (DEFAULT_FALLBACK_MARGIN if margin is None else margin)
