"""Stream a dataset's rows out of the store in batches: memory holds a batch of calls, not the whole task.

Rows are selected in (time, id) order with each call's latest feedback joined in SQL. With `dedupe`, a first
pass keeps, per normalized input, the id of the call that wins (corrected first, then best-scored, then
newest); the second pass writes only those. Between passes only small per-input keys are held.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Select, func, select

from loraforge.curation.call_examples import CallExample, call_to_example
from loraforge.store.store import Store
from loraforge.store.tables import Call, Feedback

BATCH_ROWS = 200  # calls fetched per round trip (a server-side cursor on PostgreSQL)


@dataclass(frozen=True)
class RowRef:
    """What a dataset keeps of each row once written: its provenance."""

    call_id: str
    corrected: bool
    split: str
    input_hash: str


@dataclass
class Candidate:
    example: CallExample
    corrected: bool
    score: float | None
    time: datetime


def split_of(input_hash: str, test_fraction: float) -> str:
    """Deterministic split by input hash, so equal inputs always land in the same split."""
    return "test" if int(input_hash[:16], 16) / 2**64 < test_fraction else "train"


def write_rows(
    store: Store, filt: Any, since: datetime | None, train: IO[bytes], test: IO[bytes]
) -> tuple[list[RowRef], dict[str, int]]:
    """Write the rows of `filt` as OpenAI-chat JSONL into `train` / `test`; their provenance, and counts of
    what each step kept or dropped."""
    counts = {"selected": 0, "unusable": 0, "unreviewed": 0, "low_score": 0, "corrected": 0, "duplicates": 0}
    keep: set[str] | None = _winners(store, filt, since) if filt.dedupe else None
    refs: list[RowRef] = []
    for candidate in _candidates(store, filt, since, counts):
        example = candidate.example
        if keep is not None and example.call_id not in keep:
            counts["duplicates"] += 1
            continue
        split = split_of(example.input_hash, filt.test_fraction)
        messages = [*example.messages, {"role": "assistant", "content": example.output}]
        line = json.dumps({"messages": messages}, ensure_ascii=False) + "\n"
        (test if split == "test" else train).write(line.encode())
        refs.append(RowRef(example.call_id, candidate.corrected, split, example.input_hash))
    return refs, counts


def _winners(store: Store, filt: Any, since: datetime | None) -> set[str]:
    best: dict[str, tuple[tuple[bool, float], str]] = {}
    for c in _candidates(store, filt, since, {}):
        rank = (c.corrected, c.score if c.score is not None else float("-inf"))
        held = best.get(c.example.input_hash)
        if held is None or rank >= held[0]:  # ties go to the newer call
            best[c.example.input_hash] = (rank, c.example.call_id)
    return {call_id for _, call_id in best.values()}


def _candidates(
    store: Store, filt: Any, since: datetime | None, counts: dict[str, int]
) -> Iterator[Candidate]:
    """Usable, not low-scored examples (corrections applied), oldest first; counts what was dropped."""
    for count in ("selected", "unusable", "unreviewed", "low_score", "corrected"):
        counts.setdefault(count, 0)
    with store.db.connect() as conn:
        result = conn.execution_options(yield_per=BATCH_ROWS).execute(feedback_query(filt.task, since))
        for row in result:
            counts["selected"] += 1
            example = call_to_example(row)
            if example is None:
                counts["unusable"] += 1
                continue
            score = row.score
            # A correction replaces the answer its low score was about: only uncorrected answers are dropped.
            corrected = bool(filt.use_corrections and row.corrected_output is not None)
            low = filt.min_score is not None and score is not None and score < filt.min_score
            if low and not corrected:
                counts["low_score"] += 1
                continue
            if filt.reviewed_only and not _reviewed(filt, row):
                counts["unreviewed"] += 1
                continue
            if corrected:
                example = CallExample(
                    example.call_id, example.messages, row.corrected_output, example.input_hash
                )
                counts["corrected"] += 1
            yield Candidate(example, corrected, score, row.time)


def _reviewed(filt: Any, row: Any) -> bool:
    """A person looked at it: it was corrected (when corrections are used) or scored at least min_score."""
    if filt.use_corrections and row.corrected_output is not None:
        return True
    return row.score is not None and (filt.min_score is None or row.score >= filt.min_score)


def count_candidates(store: Store, filt: Any, since: datetime | None = None) -> int:
    """How many calls `filt` would select, counted in SQL (bodies a build finds unusable still count)."""
    query = feedback_query(filt.task, since).order_by(None)
    if filt.reviewed_only:
        reviewed = Feedback.score.is_not(None)
        if filt.min_score is not None:
            reviewed = Feedback.score >= filt.min_score
        if filt.use_corrections:
            reviewed = reviewed | Feedback.corrected_output.is_not(None)
        query = query.where(reviewed)
    elif filt.min_score is not None:
        kept = Feedback.score.is_(None) | (Feedback.score >= filt.min_score)
        if filt.use_corrections:
            kept = kept | Feedback.corrected_output.is_not(None)
        query = query.where(kept)
    with store.db.connect() as conn:
        return conn.scalar(select(func.count()).select_from(query.subquery())) or 0


def feedback_query(task: str, since: datetime | None) -> Select:
    """The task's successful calls (shadow answers excluded) with their latest feedback's score and
    correction, oldest first."""
    latest_feedback = (
        select(Feedback.id)
        .where(Feedback.call_id == Call.id)
        .order_by(Feedback.time.desc(), Feedback.id.desc())
        .limit(1)
        .correlate(Call)
        .scalar_subquery()
    )
    query = (
        select(
            Call.id,
            Call.endpoint,
            Call.request_body,
            Call.response_body,
            Call.time,
            Feedback.score,
            Feedback.corrected_output,
        )
        .outerjoin(Feedback, Feedback.id == latest_feedback)
        # shadow answers mirror a call: never examples of their own
        .where(Call.task == task, Call.status == "ok", Call.shadow_of.is_(None))
        .order_by(Call.time, Call.id)
    )
    return query.where(Call.time >= since) if since is not None else query


def file_digest_into(hasher: Any, path: Path) -> None:
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
