"""Completion-only causal-LM loss that runs the LM head only where a label exists, and the prototype loss a
classifier can add to it."""

import torch
import torch.nn.functional as F

from loraforge.data.tokenize import IGNORE_INDEX

# The prototype loss's softmax temperature over cosines, and how slowly a label's prototype follows its rows
# (an exponential moving average). The temperature was chosen on Banking77 validation rows against the first
# value tried, 0.1, and a lower one, 0.03 (README "Fine-tuning": the nearest example's accuracy with and
# without an `oos` label); the momentum is the first value tried.
PROTOTYPE_TEMPERATURE = 0.05
PROTOTYPE_MOMENTUM = 0.9


class LabelPrototypes:
    """A running mean answer state for each target (its completion's tokens: a classification's label), and
    the loss that pulls each row's answer state toward its own label's prototype and away from every other
    label's: a cosine classifier over all labels, on the vector the nearest-example classifier compares
    (classify/label_index.py). The LM loss alone trains that state only to predict the label's first token,
    so labels that share it (`card_arrival`, `card_linking`) are left for later positions to tell apart.

    The prototypes are running statistics, not weights: nothing is saved, and a resumed run starts them again
    from its first rows (under `--nproc`, each rank keeps its own)."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.vectors: dict[tuple[int, ...], torch.Tensor] = {}

    def loss(self, states: torch.Tensor, targets: list[tuple[int, ...]]) -> torch.Tensor:
        """Cross-entropy of each row's cosines to the prototypes (of the labels seen so far) against its own
        label's; then the prototypes move toward this batch's rows."""
        states = F.normalize(states.float(), dim=1)
        for target, state in zip(targets, states.detach(), strict=True):
            self.vectors.setdefault(target, state.clone())
        order = {target: i for i, target in enumerate(self.vectors)}
        prototypes = F.normalize(torch.stack(list(self.vectors.values())), dim=1).to(states.device)
        ids = torch.tensor([order[target] for target in targets], device=states.device)
        loss = F.cross_entropy(states @ prototypes.T / PROTOTYPE_TEMPERATURE, ids)
        for target, state in zip(targets, states.detach(), strict=True):
            self.vectors[target] = self.vectors[target].lerp(state, 1 - PROTOTYPE_MOMENTUM)
        return loss


def completion_loss(
    causal_lm,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    prototypes: LabelPrototypes | None = None,
):
    """Mean next-token cross-entropy over completion tokens (plus the prototypes' weighted loss, if given),
    and how many completion tokens there were.

    The LM head (vocab x hidden, the single largest matmul of a small model) and the softmax run only at
    the positions that predict a completion token, not at every prompt and padding position.
    """
    hidden = causal_lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    selected = hidden[:, :-1][keep]
    logits = causal_lm.lm_head(selected).float()
    count = int(keep.sum())
    loss = F.cross_entropy(logits, targets[keep], reduction="sum") / max(count, 1)
    rows = keep.any(dim=1).nonzero().flatten()  # rows with a completion left after truncation
    if prototypes is not None and len(rows):
        answer = keep[rows].int().argmax(dim=1)  # the position that predicts the first completion token
        states = hidden[:, :-1][rows, answer]
        row_targets = [tuple(targets[row][keep[row]].tolist()) for row in rows.tolist()]
        loss = loss + prototypes.weight * prototypes.loss(states, row_targets)
    return loss, count
