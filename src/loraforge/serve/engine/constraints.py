"""Constrained decoding: what a sequence may generate next. A `Constraint` (shared by requests) gives each
sequence its own state (`start()`); the sampler asks that state to mask the row's logits before choosing.

Two kinds: `ChoiceConstraint` here (one of a fixed set of strings: a classifier's labels, the API's
`guided_choice`) and `GrammarConstraint` (grammar.py: JSON schemas, regexes)."""

from typing import Protocol

import torch


class ConstraintState(Protocol):
    def mask(self, logits: torch.Tensor, row: int, generated: list[int]) -> None:
        """Set `logits[row, t]` to -inf for every token `t` not allowed after `generated` (in place)."""

    def decided(self, generated: list[int]) -> list[int]:
        """The rest of the output, through the end of sequence, when only one way to finish is left after
        `generated`; empty while there is still a choice. The engine appends it without a model step per
        token (engine.py: `_take_decided`)."""


class Constraint(Protocol):
    def start(self) -> ConstraintState:
        """The state of one new sequence under this constraint."""


class ChoiceConstraint:
    """A prefix tree over the token ids of every choice, each followed by EOS. Stateless: `start()` is the
    tree itself. How it compares with a grammar for this: `benchmarks/structured_overhead.py`."""

    def __init__(self, choices: list[list[int]], eos_id: int) -> None:
        if not choices:
            raise ValueError("a choice constraint needs at least one choice")
        self.eos_id = eos_id
        self.root: dict[int, dict] = {}
        for ids in choices:
            node = self.root
            for token in [*ids, eos_id]:
                node = node.setdefault(token, {})

    @classmethod
    def from_strings(cls, choices: list[str], tokenizer) -> "ChoiceConstraint":
        """Each choice tokenized on its own, as the model spells it right after the prompt."""
        ids = [tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in choices]
        return cls(ids, tokenizer.eos_token_id)

    def _node(self, generated: list[int]) -> dict[int, dict] | None:
        """The tree's node after `generated`; None when `generated` has left the tree."""
        node = self.root
        for token in generated:
            node = node.get(token)
            if node is None:
                return None
        return node

    def allowed(self, generated: list[int]) -> list[int]:
        """Token ids (ascending) that keep `generated` on a path to a complete choice; EOS once one is
        complete or when `generated` has left the tree."""
        node = self._node(generated)
        return sorted(node or ()) or [self.eos_id]

    def decided(self, generated: list[int]) -> list[int]:
        node = self._node(generated)
        tail = []
        while node is not None and len(node) == 1:
            ((token, node),) = node.items()
            tail.append(token)
            if token == self.eos_id:
                return tail
        return []

    def start(self) -> "ChoiceConstraint":
        return self

    def mask(self, logits: torch.Tensor, row: int, generated: list[int]) -> None:
        allowed = torch.tensor(self.allowed(generated))
        kept = logits[row, allowed]
        logits[row] = float("-inf")
        logits[row, allowed] = kept
