"""The label index: nearest training row by cosine, saved beside an adapter and read back."""

import pytest
import torch
from safetensors.torch import save_file

from loraforge.classify.label_index import INDEX_FILE, LabelIndex
from loraforge.errors import ConfigError, DataError

LABELS = ["card_arrival", "exchange_rate", "oos"]


def _index() -> LabelIndex:
    states = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    return LabelIndex.build(states, ["card_arrival", "exchange_rate", "oos", "exchange_rate"], LABELS)


def test_each_row_takes_the_label_of_the_most_similar_training_row():
    index = _index()
    assert torch.allclose(index.states.norm(dim=1), torch.ones(4))  # unit rows: a dot product is a cosine
    found = index.nearest(torch.tensor([[5.0, 0.1, 0.0], [0.9, 1.1, 0.0], [0.0, -1.0, 0.2]]))
    assert [n.label for n in found] == ["card_arrival", "exchange_rate", "oos"]
    assert found[0].similarity == pytest.approx(5.0 / (5.0**2 + 0.1**2) ** 0.5, abs=1e-6)
    assert found[1].similarity == pytest.approx((0.9 + 1.1) / (2**0.5 * (0.81 + 1.21) ** 0.5), abs=1e-6)


def test_the_fallback_label_answers_a_row_not_clearly_nearer_another_labels_rows():
    """With a fallback label, a row keeps its nearest label only when at least `margin` more similar to it
    than to the fallback label's nearest row, and at least `min_similarity` similar; a row nearest a fallback
    row is the fallback at any margin."""
    index = _index()
    near_card, near_oos = index.nearest(torch.tensor([[1.0, 0.0, 0.5], [0.1, 0.0, 1.0]]), "oos")
    assert near_card.label == "card_arrival" and near_oos.label == "oos"
    assert near_card.similarity == pytest.approx(1 / 1.25**0.5, abs=1e-6)
    assert near_card.fallback_similarity == pytest.approx(0.5 / 1.25**0.5, abs=1e-6)  # gap 0.447
    assert near_card.or_fallback("oos", 0.0) == near_card.or_fallback("oos", 0.44) == "card_arrival"
    assert near_card.or_fallback("oos", 0.45) == "oos"
    assert near_oos.or_fallback("oos", 0.0) == near_oos.or_fallback("oos", 0.9) == "oos"
    # a row less similar than `min_similarity` to its nearest row is unlike every training row (0.894 here)
    assert near_card.or_fallback("oos", 0.0, 0.89) == "card_arrival"
    assert near_card.or_fallback("oos", 0.0, 0.9) == "oos"
    assert index.nearest(torch.tensor([[1.0, 0.0, 0.5]]))[0].fallback_similarity is None  # none asked
    index.check_fallback("oos")
    without = LabelIndex.build(torch.eye(2), ["card_arrival", "exchange_rate"], LABELS)
    assert without.nearest(torch.tensor([[1.0, 0.0]]), "oos")[0].or_fallback("oos", 0.9) == "card_arrival"
    with pytest.raises(ConfigError, match="no training rows of the fallback label 'oos'"):
        without.check_fallback("oos")


def test_an_index_round_trips_through_the_adapter_folder(tmp_path):
    assert LabelIndex.load(tmp_path) is None  # an adapter trained without one
    index = _index()
    assert index.save(tmp_path) == tmp_path / INDEX_FILE
    loaded = LabelIndex.load(tmp_path)
    assert loaded.labels == LABELS
    assert torch.equal(loaded.states, index.states) and torch.equal(loaded.label_ids, index.label_ids)


def test_labels_outside_the_label_set_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="outside the label set: \\['refund'\\]"):
        LabelIndex.build(torch.ones(1, 3), ["refund"], LABELS)
    with pytest.raises(DataError, match="one state per training row"):
        LabelIndex.build(torch.ones(2, 3), ["oos"], LABELS)
    save_file({"weight": torch.ones(2)}, str(tmp_path / INDEX_FILE))
    with pytest.raises(ConfigError, match="is not a label index"):
        LabelIndex.load(tmp_path)
    save_file(
        {"states": torch.ones(1, 3), "label_ids": torch.tensor([5])},
        str(tmp_path / INDEX_FILE),
        metadata={"labels": '["a"]'},
    )
    with pytest.raises(ConfigError, match="rows and labels do not match"):
        LabelIndex.load(tmp_path)
    (tmp_path / INDEX_FILE).write_bytes(b"not safetensors at all")
    with pytest.raises(ConfigError, match="is not a readable label index"):
        LabelIndex.load(tmp_path)


def test_an_index_fits_a_model_and_a_label_set_or_says_why_not():
    index = _index()
    index.check_fits(3, LABELS, "guided_choice")
    with pytest.raises(ConfigError, match="3-dimensional states, the model's are 576"):
        index.check_fits(576, LABELS, "guided_choice")
    with pytest.raises(ConfigError, match="outside guided_choice: \\['oos'\\]"):
        index.check_fits(3, LABELS[:2], "guided_choice")
