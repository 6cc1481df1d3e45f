"""Exact and near-duplicate detection: normalized text, character n-gram Jaccard, MinHash + LSH lookup."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

NGRAM = 4
NUM_PERM = 128
_PRIME = (1 << 31) - 1  # a*x+b stays below 2**62 with 31-bit operands, so uint64 never overflows
_NON_WORD = re.compile(r"[^\w\s]+")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Case-fold, drop punctuation and collapse whitespace, so trivially different texts compare equal."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACES.sub(" ", _NON_WORD.sub(" ", text)).strip()


def shingles(norm: str, n: int = NGRAM) -> set[str]:
    """Character n-grams of an already normalized text; a text shorter than n is its own single shingle."""
    if len(norm) <= n:
        return {norm}
    return {norm[i : i + n] for i in range(len(norm) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def _shingle_hashes(grams: set[str]) -> np.ndarray:
    # Stable across processes (unlike hash()), so an index rebuilt on resume behaves identically.
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") % _PRIME
            for g in grams
        ],
        dtype=np.uint64,
    )


class MinHasher:
    """MinHash signatures: for each of NUM_PERM random hash functions, the minimum over a text's shingles."""

    def __init__(self, num_perm: int = NUM_PERM, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, size=(num_perm, 1), dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=(num_perm, 1), dtype=np.uint64)

    def signature(self, grams: set[str]) -> np.ndarray:
        x = _shingle_hashes(grams)[None, :]
        return ((self.a * x + self.b) % _PRIME).min(axis=1)


def lsh_bands(threshold: float, num_perm: int = NUM_PERM, recall: float = 0.999) -> tuple[int, int]:
    """(bands, rows): the most selective banding that finds a pair at `threshold` with prob. `recall`."""
    best = (num_perm, 1)
    for rows in range(1, 17):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


@dataclass(frozen=True)
class Match:
    """Why a text is a duplicate: `kind` is 'exact' or 'near', `source` the collection it matched."""

    kind: str
    source: str
    similarity: float


class DedupIndex:
    """Texts seen so far (seed examples, a test set, generated rows); says whether a new one is a duplicate.

    Candidates come from MinHash LSH buckets, then the exact Jaccard of their shingle sets decides, so a
    reported near-duplicate is always at or above the threshold.
    """

    def __init__(self, threshold: float = 0.8, ngram: int = NGRAM) -> None:
        if not 0 < threshold <= 1:
            raise ValueError("near-duplicate threshold must be in (0, 1]")
        self.threshold = threshold
        self.ngram = ngram
        self._hasher = MinHasher()
        self._bands, self._rows = lsh_bands(threshold)
        self._exact: dict[str, str] = {}
        self._grams: list[set[str]] = []
        self._sources: list[str] = []
        self._buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(self._bands)]

    def __len__(self) -> int:
        return len(self._grams)

    def _band_keys(self, grams: set[str]) -> list[bytes]:
        sig = self._hasher.signature(grams)
        r = self._rows
        return [sig[i * r : (i + 1) * r].tobytes() for i in range(self._bands)]

    def find(self, text: str) -> Match | None:
        """The first duplicate of `text` already in the index, or None."""
        norm = normalize(text)
        if norm in self._exact:
            return Match("exact", self._exact[norm], 1.0)
        if self.threshold >= 1.0:
            return None
        grams = shingles(norm, self.ngram)
        best: Match | None = None
        for band, key in enumerate(self._band_keys(grams)):
            for idx in self._buckets[band].get(key, ()):
                sim = jaccard(grams, self._grams[idx])
                if sim >= self.threshold and (best is None or sim > best.similarity):
                    best = Match("near", self._sources[idx], sim)
        return best

    def add(self, text: str, source: str) -> None:
        norm = normalize(text)
        self._exact.setdefault(norm, source)
        grams = shingles(norm, self.ngram)
        idx = len(self._grams)
        self._grams.append(grams)
        self._sources.append(source)
        for band, key in enumerate(self._band_keys(grams)):
            self._buckets[band][key].append(idx)

    def check_and_add(self, text: str, source: str) -> Match | None:
        """Add `text` unless it duplicates something already indexed; return the match if it does."""
        match = self.find(text)
        if match is None:
            self.add(text, source)
        return match
