"""Constrained decoding: a sequence may only spell out one of a fixed set of strings (a classifier's labels,
an API's `guided_choice`), then end. The sampler masks every other token before choosing."""


class ChoiceConstraint:
    """A prefix tree over the token ids of every choice, each followed by EOS."""

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

    def allowed(self, generated: list[int]) -> list[int]:
        """Token ids (ascending) that keep `generated` on a path to a complete choice; EOS once one is
        complete or when `generated` has left the tree."""
        node = self.root
        for token in generated:
            if token not in node:
                return [self.eos_id]
            node = node[token]
        return sorted(node) or [self.eos_id]
