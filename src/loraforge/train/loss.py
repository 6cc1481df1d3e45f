"""Completion-only causal-LM loss that runs the LM head only where a label exists."""

import torch
import torch.nn.functional as F

from loraforge.data.tokenize import IGNORE_INDEX


def completion_loss(causal_lm, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
    """Mean next-token cross-entropy over completion tokens, and how many there were.

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
    return loss, count
