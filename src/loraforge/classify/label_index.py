"""A classifier's label index: the label of the nearest training example in the adapter's own representation.

For each training row, the adapter's final hidden state at the answer position (the vector its LM head reads
to predict the label's first token), L2-normalized, and the row's label. A new row takes the label of the
training row of highest cosine similarity. With few examples a label this beats decoding the label with the
same adapter (`benchmarks/label_neighbours.py`; README "Fine-tuning"): the head has seen each label a handful
of times, while the representation already places paraphrases of one intent together.

The index lives beside the adapter's weights, as safetensors, and is read only from the adapter's own folder.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loraforge.errors import ConfigError

INDEX_FILE = "label_index.safetensors"


@dataclass(frozen=True)
class Neighbour:
    label: str
    similarity: float  # cosine to the nearest training row of that label, in [-1, 1]


@dataclass
class LabelIndex:
    states: torch.Tensor  # `[rows, hidden]` fp32, unit rows
    label_ids: torch.Tensor  # `[rows]` int64, indices into `labels`
    labels: list[str]

    @classmethod
    def build(cls, states: torch.Tensor, row_labels: list[str], labels: list[str]) -> "LabelIndex":
        """From the training rows' answer states and labels; `labels` is the label set, in its order."""
        unknown = sorted(set(row_labels) - set(labels))
        if unknown:
            raise ConfigError(f"label index: training rows carry labels outside the label set: {unknown[:5]}")
        if len(row_labels) != len(states) or not len(states):
            raise ConfigError("label index: needs one state per training row, and at least one row")
        ids = torch.tensor([labels.index(label) for label in row_labels])
        return cls(F.normalize(states.float(), dim=1), ids, list(labels))

    def nearest(self, states: torch.Tensor) -> list[Neighbour]:
        """Each row's label: that of the most similar training row."""
        similarity = F.normalize(states.float(), dim=1) @ self.states.T  # [rows, train]
        best, at = similarity.max(dim=1)
        return [
            Neighbour(self.labels[self.label_ids[i]], s)
            for i, s in zip(at.tolist(), best.tolist(), strict=True)
        ]

    def save(self, adapter_dir: Path) -> Path:
        path = adapter_dir / INDEX_FILE
        tensors = {"states": self.states.contiguous(), "label_ids": self.label_ids.contiguous()}
        save_file(tensors, str(path), metadata={"labels": json.dumps(self.labels, ensure_ascii=False)})
        return path

    @classmethod
    def load(cls, adapter_dir: Path) -> "LabelIndex | None":
        """The index in `adapter_dir`, or None where the adapter has none."""
        path = adapter_dir / INDEX_FILE
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as handle:
            labels = json.loads((handle.metadata() or {}).get("labels", "null"))
        tensors = load_file(str(path))
        if not isinstance(labels, list) or set(tensors) != {"states", "label_ids"}:
            raise ConfigError(f"{path} is not a label index (states, label_ids and the labels' metadata)")
        index = cls(tensors["states"].float(), tensors["label_ids"].long(), [str(label) for label in labels])
        if len(index.states) != len(index.label_ids) or int(index.label_ids.max()) >= len(labels):
            raise ConfigError(f"{path}: its rows and labels do not match")
        return index
