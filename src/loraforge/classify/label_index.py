"""A classifier's label index: the label of the nearest training example in the adapter's own representation.

For each training row, the adapter's final hidden state at the answer position (the vector its LM head reads
to predict the label's first token), L2-normalized, and the row's label. A new row takes the label of the
training row of highest cosine similarity. With few examples a label this beats decoding the label with the
same adapter (`benchmarks/label_neighbours.py`; README "Fine-tuning"): the head has seen each label a handful
of times, while the representation already places paraphrases of one intent together.

The index lives beside the adapter's weights, as safetensors, and is read only from the adapter's own folder.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from loraforge.errors import ConfigError, DataError

INDEX_FILE = "label_index.safetensors"
CHUNK = 1024  # evaluated rows compared at once: `[CHUNK, training rows]` similarities in memory


@dataclass(frozen=True)
class Neighbour:
    label: str
    similarity: float  # cosine to the nearest training row of that label, in [-1, 1]
    fallback_similarity: float | None = None  # cosine to the nearest row of the fallback label asked about

    def or_fallback(self, fallback: str, margin: float, min_similarity: float | None = None) -> str:
        """`label`, unless the row is not at least `margin` nearer it than the fallback label's nearest row
        (an out-of-scope row sits between the labels; the fallback's few rows cannot surround it), or is less
        similar than `min_similarity` to it (a row unlike every training example)."""
        if self.fallback_similarity is None:
            return self.label
        unsure = self.similarity - self.fallback_similarity < margin
        if unsure or (min_similarity is not None and self.similarity < min_similarity):
            return fallback
        return self.label


@dataclass
class LabelIndex:
    states: torch.Tensor  # `[rows, hidden]` fp32, unit rows
    label_ids: torch.Tensor  # `[rows]` int64, indices into `labels`
    labels: list[str]

    @classmethod
    def build(cls, states: torch.Tensor, row_labels: list[str], labels: list[str]) -> "LabelIndex":
        """From the training rows' answer states and labels; `labels` is the label set, in its order."""
        check_labels(row_labels, labels)
        if len(row_labels) != len(states) or not len(states):
            raise DataError("label index: needs one state per training row, and at least one row")
        ids = torch.tensor([labels.index(label) for label in row_labels])
        return cls(F.normalize(states.float(), dim=1), ids, list(labels))

    @property
    def hidden_size(self) -> int:
        return self.states.shape[1]

    def answered(self) -> set[str]:
        """The labels this index can answer: those of its rows."""
        return {self.labels[i] for i in self.label_ids.unique().tolist()}

    def check_fits(self, hidden_size: int, labels: list[str], labels_name: str) -> None:
        """ConfigError when this index cannot answer for a model of `hidden_size` among `labels` (an index of
        another base model, or of another label set)."""
        if self.hidden_size != hidden_size:
            raise ConfigError(
                f"the label index holds {self.hidden_size}-dimensional states, the model's are {hidden_size}"
                " (an index of another base model)"
            )
        outside = sorted(self.answered() - set(labels))
        if outside:
            raise ConfigError(f"the label index answers labels outside {labels_name}: {outside[:5]}")

    def check_fallback(self, fallback: str) -> None:
        """ConfigError when the index has no training rows of `fallback`: the nearest-example classifier's
        fallback compares each row with them (`Neighbour.or_fallback`)."""
        if fallback not in self.answered():
            raise ConfigError(
                f"the label index has no training rows of the fallback label {fallback!r}: the"
                " nearest-example classifier answers it by comparing with them (train on some, or decode the"
                " label instead)"
            )

    def nearest(self, states: torch.Tensor, fallback: str | None = None) -> list[Neighbour]:
        """Each row's label: that of the most similar training row; with a `fallback` label the index has rows
        of, also the cosine to its nearest one (for `Neighbour.or_fallback`)."""
        found = []
        rows = self.label_ids == self.labels.index(fallback) if fallback in self.labels else None
        for chunk in F.normalize(states.float(), dim=1).split(CHUNK):
            similarity = chunk @ self.states.T  # [chunk, train]
            best, at = similarity.max(dim=1)
            to_fallback = [None] * len(chunk)
            if rows is not None and rows.any():
                to_fallback = similarity[:, rows].max(dim=1).values.tolist()
            found += [
                Neighbour(self.labels[self.label_ids[i]], s, f)
                for i, s, f in zip(at.tolist(), best.tolist(), to_fallback, strict=True)
            ]
        return found

    def save(self, adapter_dir: Path) -> Path:
        """Write the index beside the adapter's weights; written whole, then renamed into place, so a server
        reading the folder never sees half a file."""
        path = adapter_dir / INDEX_FILE
        partial = path.with_suffix(".partial")
        tensors = {"states": self.states.contiguous(), "label_ids": self.label_ids.contiguous()}
        save_file(tensors, str(partial), metadata={"labels": json.dumps(self.labels, ensure_ascii=False)})
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, adapter_dir: Path) -> "LabelIndex | None":
        """The index in `adapter_dir`, or None where the adapter has none; a file that is not a well-formed
        index is a ConfigError naming it."""
        path = adapter_dir / INDEX_FILE
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            labels = json.loads(metadata.get("labels", "null"))
        except FileNotFoundError:
            return None
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not a readable label index ({exc})") from None
        if not isinstance(labels, list) or set(tensors) != {"states", "label_ids"}:
            raise ConfigError(f"{path} is not a label index (states, label_ids and the labels' metadata)")
        states, ids = tensors["states"].float(), tensors["label_ids"].long()
        if (
            states.dim() != 2
            or ids.shape != (len(states),)
            or not len(ids)
            or not 0 <= ids.min() <= ids.max() < len(labels)
        ):
            raise ConfigError(f"{path}: its rows and labels do not match")
        return cls(states, ids, [str(label) for label in labels])


def check_labels(row_labels: list[str], labels: list[str]) -> None:
    """DataError when a training row's label is not in the label set (checked before training, not after)."""
    unknown = sorted(set(row_labels) - set(labels))
    if unknown:
        raise DataError(f"label index: training rows carry labels outside the label set: {unknown[:5]}")
