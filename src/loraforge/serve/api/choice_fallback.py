"""Extension: a fallback label for `guided_choice` (`guided_choice_fallback`), the serving side of a
fine-tuning config's `evaluation.fallback_label`, by the same rule (config/tasks.py `fallback_rule`), so an
adapter serves what `loraforge evaluate` scored. Decoded labels: the answer is `label` whenever the model gave
the choice it picked a probability below `threshold` (the product of the choice's token probabilities, each
renormalized over the tokens the constraint allowed there). With `guided_choice_classifier: "nearest"`
(choice_nearest.py): whenever the request is not at least `margin` more similar to its nearest example than to
the fallback label's nearest one, or is less similar than `min_similarity` to it; the probability threshold
applies too only where it is given.

    extra_body={"guided_choice": labels, "guided_choice_fallback": {"label": "oos", "threshold": 0.5}}

The whole label must be known before it is sent: a streamed answer holds a choice back until its label is
complete, then sends it in one chunk. The threshold is on the greedy label's probability, so it needs
temperature 0. Logprobs, when asked for, stay those of the tokens the model chose: they show why it fell
back."""

import math

from pydantic import Field

from loraforge.config.tasks import FallbackRule, fallback_or, fallback_rule, nearest_only
from loraforge.serve.api.errors import APIError
from loraforge.serve.api.strict import Strict
from loraforge.serve.model.logprobs import TokenLogprob

PARAM = "guided_choice_fallback"


class ChoiceFallback(Strict):
    label: str = Field(min_length=1)
    threshold: float | None = Field(None, gt=0.0, lt=1.0)
    margin: float | None = Field(None, ge=0.0, le=2.0)
    min_similarity: float | None = Field(None, ge=-1.0, le=1.0)

    def rule(self, classifier: str) -> FallbackRule:
        """The rule as `classifier` applies it; defaults as in evaluation."""
        return fallback_rule(classifier, self.threshold, self.margin, self.min_similarity)


def check(req) -> None:
    """APIError 400 when `req`'s fallback cannot be applied as asked."""
    fallback: ChoiceFallback | None = req.guided_choice_fallback
    if fallback is None:
        return
    if req.guided_choice is None:
        problem = "needs guided_choice (the labels the model chooses among)"
    elif fallback.label not in req.guided_choice:
        problem = f"label {fallback.label!r} is not one of guided_choice"
    elif req.guided_choice_classifier != "nearest" and (
        asked := nearest_only(fallback.margin, fallback.min_similarity)
    ):
        problem = f"{asked} needs guided_choice_classifier 'nearest' (decoded labels use threshold)"
    elif req.temperature != 0 and fallback.rule(req.guided_choice_classifier).threshold is not None:
        problem = "needs temperature 0 (the threshold is on the greedy label's probability)"
    else:
        return
    raise APIError(400, f"{PARAM}: {problem}", "invalid_request_error", PARAM)


def decoded_probability(
    choices: list[str], text: str, logprobs: list[TokenLogprob], finish_reason: str | None
) -> float | None:
    """The probability the model gave the choice it decoded as `text`, from its per-token `logprobs`; None
    for an output cut by max_tokens or by one of the client's `stop` strings: no label, nothing to judge."""
    if finish_reason != "stop" or text not in choices:
        return None
    return math.exp(sum(entry.logprob for entry in logprobs))


def answer(fallback: ChoiceFallback, classifier: str, label: str, probability: float | None) -> str:
    """`label` (the decoded choice, or the nearest label with choice_nearest.py, which applied the margin and
    the similarity), or the fallback when the decoded choice's probability is below the threshold
    `classifier` uses."""
    threshold = fallback.rule(classifier).threshold
    if probability is None or threshold is None:
        return label
    return fallback_or(label, probability, fallback.label, threshold)
