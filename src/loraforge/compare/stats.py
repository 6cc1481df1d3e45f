"""Paired bootstrap: every figure (and the candidate-minus-baseline difference) with a 95% interval.

Both sides are resampled with the same item indices, so the interval of a difference reflects that the two
answered the same inputs. Row 0 of the index matrix is the identity: the point estimate.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0  # fixed: the same comparison gives the same intervals

Statistic = Callable[[np.ndarray], np.ndarray]  # index matrix (rows, n) -> one value per row


@dataclass(frozen=True)
class Figure:
    value: float
    lo: float
    hi: float

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


def index_matrix(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.vstack([np.arange(n)[None, :], rng.integers(0, n, size=(resamples, n))])


def figure(values: np.ndarray) -> Figure:
    """Point estimate (row 0) and the percentile interval of the resampled rows."""
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(values[1:], [tail, 100 - tail])
    return Figure(float(values[0]), float(lo), float(hi))


def mean_of(scores: np.ndarray) -> Statistic:
    return lambda idx: scores[idx].mean(axis=1)


def percentile_of(values: np.ndarray, q: float) -> Statistic:
    return lambda idx: np.percentile(values[idx], q, axis=1)


def macro_f1_of(predicted: np.ndarray, reference: np.ndarray, classes: int) -> Statistic:
    """Macro-F1 over class codes (a prediction outside the label set is -1: a miss, a hit for no class);
    a class absent from both sides of a resample says nothing and is left out, as in evaluation."""

    def stat(idx: np.ndarray) -> np.ndarray:
        out = np.empty(len(idx))
        for row, sample in enumerate(idx):
            p, r = predicted[sample], reference[sample]
            tp = np.bincount(r[p == r], minlength=classes)
            predicted_count = np.bincount(p[p >= 0], minlength=classes)
            fp = predicted_count - tp
            fn = np.bincount(r, minlength=classes) - tp
            denom = 2 * tp + fp + fn
            present = denom > 0
            out[row] = (2 * tp[present] / denom[present]).mean() if present.any() else 0.0
        return out

    return stat
