"""The metric names of each evaluation task and a classification's fallback rule: part of the config's
vocabulary (`evaluation.metrics`, `evaluation.fallback_*`), so they live here and `evaluate` and the server
apply them, rather than the config reaching up into either."""

from dataclasses import dataclass

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
# The same with the nearest-example classifier, two tests (Neighbour.or_fallback): the fallback label's
# training rows count DEFAULT_FALLBACK_MARGIN more similar (cosine), so a row takes another label only when it
# is clearly nearer that label's examples; and a row less similar than DEFAULT_FALLBACK_MIN_SIMILARITY to
# any example is unlike all of them. Chosen together on validation rows of that split, with adapters trained
# as `init` trains them (prototype loss) for its whole schedule and for a third of it: the pair is on the
# plateau of both, while the margin alone had to move with the schedule (README "Fine-tuning").
DEFAULT_FALLBACK_MARGIN = 0.1
DEFAULT_FALLBACK_MIN_SIMILARITY = 0.6


def fallback_or(label: str, probability: float, fallback: str, threshold: float) -> str:
    """A classification's answer with a fallback label: the model's `label`, unless it gave it a
    `probability` below `threshold` (evaluation and the serving API's `guided_choice_fallback` both)."""
    return label if probability >= threshold else fallback


@dataclass(frozen=True)
class FallbackRule:
    """When a classification answers its fallback label instead of the classifier's label: the decoded
    label's probability is under `threshold`; with the nearest-example classifier, the row is not `margin`
    nearer its nearest example than the fallback label's nearest one, or is less similar than
    `min_similarity` even to its nearest example. None: that test does not apply."""

    threshold: float | None
    margin: float | None = None
    min_similarity: float | None = None


def nearest_only(margin: float | None, min_similarity: float | None) -> str | None:
    """The name of the first of these cuts that was given: only the nearest-example classifier applies them
    (the config names them `fallback_<name>`, the server's `guided_choice_fallback` `<name>`)."""
    return "margin" if margin is not None else "min_similarity" if min_similarity is not None else None


def fallback_rule(
    classifier: str,
    threshold: float | None,
    margin: float | None = None,
    min_similarity: float | None = None,
) -> FallbackRule:
    """The fallback's rule as a classifier applies it, from what was asked (None: not given). `decode` judges
    the decoded label's probability (by default under DEFAULT_FALLBACK_THRESHOLD) and nothing else;
    `nearest` judges the margin and the similarity (defaults DEFAULT_FALLBACK_MARGIN and
    DEFAULT_FALLBACK_MIN_SIMILARITY), and the decoded probability too only where a threshold is given.
    ValueError for a margin or a similarity asked of `decode`."""
    if classifier == "decode":
        if asked := nearest_only(margin, min_similarity):
            raise ValueError(f"a fallback {asked} needs the nearest-example classifier")
        return FallbackRule(DEFAULT_FALLBACK_THRESHOLD if threshold is None else threshold)
    return FallbackRule(
        threshold,
        DEFAULT_FALLBACK_MARGIN if margin is None else margin,
        DEFAULT_FALLBACK_MIN_SIMILARITY if min_similarity is None else min_similarity,
    )
