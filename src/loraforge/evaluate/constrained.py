"""Constrained decoding for classification: the model may only spell out one of the labels, then stop."""

from collections.abc import Callable

import torch


class LabelTrie:
    """A prefix tree over the token ids of every label (each followed by EOS)."""

    def __init__(self, labels: list[str], tokenizer) -> None:
        self.eos_id = tokenizer.eos_token_id
        self.root: dict[int, dict] = {}
        for label in labels:
            node = self.root
            for token in tokenizer(label, add_special_tokens=False)["input_ids"] + [self.eos_id]:
                node = node.setdefault(token, {})

    def allowed_after(self, generated: list[int]) -> list[int]:
        """Token ids that keep `generated` on a path to a complete label; EOS once a label is complete."""
        node = self.root
        for token in generated:
            if token not in node:
                return [self.eos_id]
            node = node[token]
        return list(node) or [self.eos_id]


def prefix_allowed_tokens(trie: LabelTrie, prompt_width: int) -> Callable[[int, torch.Tensor], list[int]]:
    """HF generate's `prefix_allowed_tokens_fn` for a left-padded batch of prompts `prompt_width` wide."""

    def allowed(_batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return trie.allowed_after(input_ids[prompt_width:].tolist())

    return allowed
