"""`synth generate`: ask a teacher for new examples until N valid, deduplicated rows are saved (resumable)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loraforge.errors import LoraforgeError
from loraforge.synth.dedup import DedupIndex, Match
from loraforge.synth.parsing import parse_batch
from loraforge.synth.pool import run_bounded
from loraforge.synth.prompts import (
    GENERATE_VERSION,
    Seed,
    generate_instruction_texts,
    generate_messages,
    generate_response_format,
    rotate,
)
from loraforge.synth.records import RowWriter, load_existing, make_row
from loraforge.synth.report import Summary
from loraforge.synth.teacher import TeacherClient, TeacherError, TeacherReply
from loraforge.synth.validation import EMPTY, MALFORMED, OutputSpec, check_example

SURPLUS = "surplus"  # valid examples beyond N from the last answers: not saved, so the file holds exactly N


@dataclass
class GenerateConfig:
    """What to generate and how; `max_requests` None means a budget derived from N."""

    description: str
    spec: OutputSpec
    n: int
    out: Path
    seeds: list[Seed] = field(default_factory=list)
    test_texts: list[str] = field(default_factory=list)
    fmt: str = "chat"
    per_request: int = 5
    seeds_per_request: int = 3
    concurrency: int = 4
    near_dup_threshold: float = 0.8
    max_requests: int | None = None
    shuffle_seed: int = 0
    # Ask the teacher for JSON Schema-constrained answers (OpenAI structured outputs; also vLLM and
    # `loraforge serve`): no malformed JSON and no invented labels, which matters most with a small teacher.
    structured: bool = False

    def request_budget(self, missing: int) -> int:
        if self.max_requests is not None:
            return self.max_requests
        # Generous enough for a teacher that loses two thirds of its examples to validation and dedup.
        return 3 * math.ceil(missing / self.per_request) + 10


def match_kind(match: Match) -> str:
    """Summary key of a duplicate: leakage into seeds or the test set is reported apart from plain repeats."""
    return match.source if match.source in ("seed", "test") else match.kind


def build_index(config: GenerateConfig, saved_inputs: list[str]) -> DedupIndex:
    index = DedupIndex(config.near_dup_threshold)
    for seed in config.seeds:
        index.add(seed.input, "seed")
    for text in config.test_texts:
        index.add(text, "test")
    for text in saved_inputs:
        index.add(text, "saved")
    return index


async def synthesize(
    config: GenerateConfig, teacher: TeacherClient, progress: Callable[[int], None] | None = None
) -> Summary:
    """Generate until `config.n` rows are in `config.out`; on teacher failure stop early, saying why."""
    if config.n < 1 or config.per_request < 1:
        raise LoraforgeError("--n and --per-request must be at least 1")
    existing = load_existing(config.out, config.fmt)
    summary = Summary("generate", requested=config.n, already_saved=len(existing), total_rows=len(existing))
    if config.spec.labels:
        summary.per_label.update(dict.fromkeys(config.spec.labels, 0))  # labels with no rows must show too
        summary.per_label.update(row.output for row in existing)
    if len(existing) >= config.n:
        summary.complete = True
        return summary

    index = build_index(config, [row.input for row in existing])
    prompt_texts = generate_instruction_texts(config.description, config.spec)
    seed_order = list(config.seeds)
    random.Random(config.shuffle_seed).shuffle(seed_order)
    # Continue the seed/label rotation where the saved rows left off rather than re-asking the same prompts.
    first = 1 + max(
        (r.metadata.get("request", -1) for r in existing if isinstance(r.metadata.get("request"), int)),
        default=-1,
    )
    budget = config.request_budget(config.n - len(existing))
    model = teacher.settings.model
    retries_before = teacher.stats.retries.copy()
    # The same for every request: it depends only on the task and the number of examples asked for.
    fmt = generate_response_format(config.spec, config.per_request) if config.structured else None

    def job(i: int) -> Callable[[], Any]:
        seeds = rotate(seed_order, i, config.seeds_per_request)
        focus = rotate(config.spec.labels or [], i, config.per_request, repeat=True) or None
        messages = generate_messages(config.description, config.spec, seeds, config.per_request, focus)

        async def ask() -> tuple[int, list[Seed], TeacherReply]:
            return (
                i,
                seeds,
                await teacher.chat(messages, request_id=f"synth-generate-{i}", response_format=fmt),
            )

        return ask

    def jobs():
        for i in range(first, first + budget):
            yield job(i)

    def may_launch(in_flight: int) -> bool:
        # Do not ask for more than can still be used: in-flight answers may already complete the file.
        missing = config.n - summary.total_rows
        return missing > 0 and (in_flight == 0 or missing > in_flight * config.per_request)

    if progress:
        progress(summary.total_rows)
    with RowWriter(config.out) as writer:

        def handle(result: tuple[int, list[Seed], TeacherReply]) -> None:
            i, seeds, reply = result
            summary.requests += 1
            created = datetime.now(UTC).isoformat(timespec="seconds")
            meta: dict[str, Any] = {
                "source": "synth-generate",
                "teacher_model": model,
                "prompt_version": GENERATE_VERSION,
                "seed_ids": [s.id for s in seeds],
                "request": i,
                "created_at": created,
            }
            if not reply.content.strip():
                summary.generated += 1
                summary.dropped[EMPTY] += 1
                return
            batch = parse_batch(reply.content, reply.finish_reason)
            if batch.tail_problem or not (batch.items or batch.broken):
                summary.generated += 1
                summary.dropped[batch.tail_problem or EMPTY] += 1
            if batch.broken:
                summary.generated += batch.broken
                summary.dropped[MALFORMED] += batch.broken
            for item in batch.items:
                summary.generated += 1
                if summary.total_rows >= config.n:
                    summary.dropped[SURPLUS] += 1
                    continue
                pair, reason = check_example(item, config.spec, prompt_texts)
                if reason:
                    summary.dropped[reason] += 1
                    continue
                assert pair is not None
                match = index.check_and_add(pair[0], "generated")
                if match:
                    summary.duplicates[match_kind(match)] += 1
                    continue
                writer.write(make_row(pair[0], pair[1], meta, config.fmt))
                summary.valid += 1
                summary.total_rows += 1
                if config.spec.labels:
                    summary.per_label[pair[1]] += 1
            if progress:
                progress(summary.total_rows)

        try:
            await run_bounded(jobs(), config.concurrency, handle, may_launch)
        except TeacherError as exc:
            summary.error = summary.stop_reason = str(exc)
        finally:
            summary.retries = teacher.stats.retries - retries_before

    summary.complete = summary.total_rows >= config.n
    if not summary.complete and summary.stop_reason is None:
        summary.stop_reason = (
            f"request budget of {budget} used up with {summary.total_rows}/{config.n} rows; "
            "re-run to continue (or raise --max-requests)"
        )
    return summary
