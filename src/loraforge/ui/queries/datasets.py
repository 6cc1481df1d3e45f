"""Datasets: versions, counts per split and per label, the rows (paged), and the diff of two versions."""

import json
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from loraforge.store.store import Store
from loraforge.store.tables import Dataset, DatasetRow
from loraforge.ui.settings import MAX_DIFF_ROWS, MAX_LABELS_SHOWN

SPLITS = ("train", "test")


def versions(store: Store) -> dict[str, list[Dataset]]:
    """Every dataset's versions, newest first, by name."""
    out: dict[str, list[Dataset]] = {}
    with Session(store.db, expire_on_commit=False) as session:
        for d in session.scalars(select(Dataset).order_by(Dataset.name, Dataset.version.desc())):
            out.setdefault(d.name, []).append(d)
    return out


def split_file(dataset: Dataset, split: str) -> Path:
    return Path(dataset.path) / f"{split}.jsonl"


@dataclass
class Row:
    number: int
    input: str
    output: str


def _row(number: int, line: str) -> Row | None:
    try:
        messages = json.loads(line)["messages"]
    except (ValueError, KeyError, TypeError):
        return None
    prompt = [m for m in messages[:-1] if isinstance(m, dict)]
    text = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)
    return Row(number, text, str(messages[-1].get("content", "")) if messages else "")


def rows(dataset: Dataset, split: str, offset: int, limit: int) -> tuple[list[Row], bool]:
    """Rows `offset`.. of a split's file (read up to them, never the whole file into memory); more after?"""
    file = split_file(dataset, split)
    if not file.is_file():
        return [], False
    out = []
    with file.open(encoding="utf-8") as handle:
        for n, line in enumerate(islice(handle, offset, offset + limit + 1), start=offset + 1):
            if len(out) == limit:
                return out, True
            row = _row(n, line)
            if row is not None:
                out.append(row)
    return out, False


def label_counts(dataset: Dataset) -> dict[str, Counter]:
    """Outputs counted per split (for a classification: rows per label); the long tail summed as (other)."""
    counts: dict[str, Counter] = {}
    for split in SPLITS:
        file = split_file(dataset, split)
        counter: Counter = Counter()
        if file.is_file():
            with file.open(encoding="utf-8") as handle:
                for line in handle:
                    row = _row(0, line)
                    if row is not None:
                        counter[row.output.strip()[:80]] += 1
        counts[split] = counter
    return counts


def top_labels(counts: dict[str, Counter]) -> tuple[list[tuple[str, dict[str, int]]], bool]:
    """The most frequent outputs with their count per split, and whether outputs look like labels at all
    (few distinct values repeating; free text gives as many values as rows)."""
    total: Counter = Counter()
    for counter in counts.values():
        total.update(counter)
    rows_n = sum(total.values())
    labels_like = bool(total) and len(total) <= max(2, rows_n // 3)
    shown = [
        (label, {s: counts[s][label] for s in SPLITS}) for label, _ in total.most_common(MAX_LABELS_SHOWN)
    ]
    rest = {s: sum(counts[s].values()) - sum(c[s] for _, c in shown) for s in SPLITS}
    if any(rest.values()):
        shown.append(("(other)", rest))
    return shown, labels_like


def corrected_count(store: Store, dataset_id: int) -> int:
    query = select(func.count()).where(DatasetRow.dataset_id == dataset_id, DatasetRow.corrected.is_(True))
    with store.db.connect() as conn:
        return int(conn.scalar(query) or 0)


@dataclass
class Diff:
    added: list[str]  # input hashes only in the newer version (their call ids)
    removed: list[str]
    changed_split: int
    same: int
    added_total: int
    removed_total: int


def diff(store: Store, old: Dataset, new: Dataset) -> Diff:
    """Rows (by their normalized input) added, removed, or moved between splits from `old` to `new`."""

    def of(dataset_id: int) -> dict[str, tuple[str, str]]:
        query = select(DatasetRow.input_hash, DatasetRow.split, DatasetRow.call_id).where(
            DatasetRow.dataset_id == dataset_id
        )
        with store.db.connect() as conn:
            return {h: (split, call) for h, split, call in conn.execute(query)}

    a, b = of(old.id), of(new.id)
    added = [b[h][1] for h in b.keys() - a.keys()]
    removed = [a[h][1] for h in a.keys() - b.keys()]
    both = a.keys() & b.keys()
    moved = sum(a[h][0] != b[h][0] for h in both)
    return Diff(
        sorted(added)[:MAX_DIFF_ROWS],
        sorted(removed)[:MAX_DIFF_ROWS],
        moved,
        len(both) - moved,
        len(added),
        len(removed),
    )
