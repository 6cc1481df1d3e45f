"""The completion-only loss and the prototype loss a classifier adds to it (train/loss.py)."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from loraforge.data.tokenize import IGNORE_INDEX
from loraforge.train.loss import PROTOTYPE_MOMENTUM, PROTOTYPE_TEMPERATURE, LabelPrototypes, completion_loss
from loraforge.train.run import run_training

X = IGNORE_INDEX


class EmbeddingLM(torch.nn.Module):
    """A causal LM whose last hidden state at a position is its token's embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(10, 4)
        self.lm_head = torch.nn.Linear(4, 10, bias=False)

    def model(self, input_ids, attention_mask):
        return SimpleNamespace(last_hidden_state=self.embed(input_ids))


def test_the_prototype_loss_is_a_cosine_classifier_over_running_label_means():
    """Beside the LM loss: each row's answer state (the position predicting its first completion token)
    against the prototypes of the targets seen so far, softmax over cosines / temperature; a new target
    starts at its first row's state and then follows its rows as a moving average. A row left without a
    completion (truncated) has no answer state."""
    lm = EmbeddingLM()
    ids = torch.tensor([[1, 2, 3, 5], [1, 4, 6, 0], [1, 7, 3, 5], [1, 8, 9, 9]])
    labels = torch.tensor([[X, X, 3, 5], [X, X, 6, X], [X, X, 3, 5], [X, X, X, X]])
    plain, count = completion_loss(lm, ids, torch.ones_like(ids), labels)
    assert count == 5
    prototypes = LabelPrototypes(weight=0.5)
    total, _ = completion_loss(lm, ids, torch.ones_like(ids), labels, prototypes)

    states = F.normalize(lm.embed(torch.tensor([2, 4, 7])).detach(), dim=1)  # tokens before the completions
    first = F.normalize(states[:2], dim=1)  # (3, 5) starts at row 0's state, (6,) at row 1's
    expected = F.cross_entropy(states @ first.T / PROTOTYPE_TEMPERATURE, torch.tensor([0, 1, 0]))
    assert total.item() == pytest.approx(plain.item() + 0.5 * expected.item(), rel=1e-5)
    assert list(prototypes.vectors) == [(3, 5), (6,)]
    moved = states[0].lerp(states[0], 1 - PROTOTYPE_MOMENTUM).lerp(states[2], 1 - PROTOTYPE_MOMENTUM)
    assert torch.allclose(prototypes.vectors[(3, 5)], moved, atol=1e-6)
    total.backward()
    assert lm.embed.weight.grad[7].abs().sum() > 0  # the answer states get the prototype loss's gradient


def _label_separation(run_dir) -> float:
    """Mean cosine between training rows of one label minus that between rows of different labels."""
    from loraforge.classify.label_index import LabelIndex

    index = LabelIndex.load(run_dir / "adapter")
    cosines = index.states @ index.states.T
    same = index.label_ids[:, None] == index.label_ids[None, :]
    return (cosines[same].mean() - cosines[~same].mean()).item()


def test_training_with_the_prototype_loss_draws_each_labels_rows_together(make_config, tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["activate_my_card", "card_arrival", "exchange_rate", "transfer_failed"]))
    separation = {}
    for weight in (0.0, 1.0):
        config = make_config(max_steps=12, prototype_loss=weight)
        update = {"labels": labels, "constrain_to_labels": True, "classifier": "nearest"}
        config = config.model_copy(update={"evaluation": config.evaluation.model_copy(update=update)})
        run_training(config, tmp_path / f"run-{weight}", show_progress=False)
        separation[weight] = _label_separation(tmp_path / f"run-{weight}")
    assert separation[1.0] > separation[0.0] + 0.1, separation  # measured at temperature 0.1: 0.22 -> 0.47
