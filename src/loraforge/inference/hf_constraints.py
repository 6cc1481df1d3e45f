"""Constrained decoding for classification with HF `generate`: the model may only spell out one of the labels,
then stop. The rule itself is the engine's `ChoiceConstraint`, so both backends constrain alike."""

from collections.abc import Callable

import torch

from loraforge.serve.engine.constraints import ChoiceConstraint


def prefix_allowed_tokens(
    constraint: ChoiceConstraint, prompt_width: int
) -> Callable[[int, torch.Tensor], list[int]]:
    """HF generate's `prefix_allowed_tokens_fn` for a left-padded batch of prompts `prompt_width` wide."""

    def allowed(_batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return constraint.allowed(input_ids[prompt_width:].tolist())

    return allowed
