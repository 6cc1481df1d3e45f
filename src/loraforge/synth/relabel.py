"""`synth relabel`: have the teacher give the output for existing inputs (plain or chat JSONL), resumably."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loraforge.errors import DataError, LoraforgeError
from loraforge.synth.dedup import DedupIndex
from loraforge.synth.parsing import parse_value
from loraforge.synth.pool import run_bounded
from loraforge.synth.prompts import RELABEL_VERSION, relabel_instruction_texts, relabel_messages
from loraforge.synth.records import Record, RowWriter, load_existing, make_row, read_records
from loraforge.synth.report import Summary
from loraforge.synth.teacher import TeacherClient, TeacherError, TeacherReply
from loraforge.synth.validation import ECHO, EMPTY, TRUNCATED, OutputSpec, is_echo


@dataclass
class RelabelConfig:
    """Which inputs to label and how; `max_attempts` is asks per input when answers are invalid."""

    inputs: Path
    out: Path
    spec: OutputSpec
    description: str | None = None
    input_field: str | None = None
    test_texts: list[str] = field(default_factory=list)
    fmt: str = "chat"
    concurrency: int = 4
    max_attempts: int = 2
    near_dup_threshold: float = 0.8


def teacher_messages(config: RelabelConfig, record: Record) -> list[dict[str, Any]]:
    """The prompt for one input; a chat input with free-text output and no task description is replayed."""
    if record.chat and config.spec.kind == "text" and not config.description:
        return [*record.context, {"role": "user", "content": record.input}]
    return relabel_messages(config.description, config.spec, record.input)


def check_answer(config: RelabelConfig, record: Record, reply: TeacherReply) -> tuple[str | None, str | None]:
    """(output, None) for a valid answer, else (None, drop reason)."""
    if reply.finish_reason == "length":
        return None, TRUNCATED
    if not reply.content.strip():
        return None, EMPTY
    value: Any = reply.content if config.spec.kind == "text" else parse_value(reply.content)
    output, reason = config.spec.check_output(value)
    if reason:
        return None, reason
    assert output is not None
    if config.spec.kind == "text" and is_echo(
        output, [record.input, *relabel_instruction_texts(config.description)]
    ):
        return None, ECHO
    return output, None


def resume_state(config: RelabelConfig, records: list[Record]) -> set[int]:
    """Input lines already labeled in the output; refuses an output written from a different input file."""
    by_line = {r.line_no: r for r in records}
    done: set[int] = set()
    for row in load_existing(config.out, config.fmt):
        line = row.metadata.get("source_line")
        if not isinstance(line, int) or line not in by_line:
            raise DataError(
                f"output file {config.out} has a row not made from {config.inputs}; pass a new --out"
            )
        if by_line[line].input.strip() != row.input:
            raise DataError(
                f"{config.inputs} changed since {config.out} was written (line {line}); pass a new --out"
            )
        done.add(line)
    return done


async def relabel(
    config: RelabelConfig, teacher: TeacherClient, progress: Callable[[int], None] | None = None
) -> Summary:
    """Label every input not yet in `config.out`; stops early (summary says why) on teacher failure."""
    if config.max_attempts < 1:
        raise LoraforgeError("--max-attempts must be at least 1")
    if config.out.resolve() == config.inputs.resolve():
        raise LoraforgeError(f"--out {config.out} is the input file; write the labeled rows to a new file")
    records = read_records(config.inputs, "input file", config.input_field)
    done = resume_state(config, records)
    summary = Summary("relabel", requested=len(records), already_saved=len(done), total_rows=len(done))
    if config.spec.labels:
        summary.per_label.update(dict.fromkeys(config.spec.labels, 0))  # labels with no rows must show too
        summary.per_label.update(row.output for row in load_existing(config.out, config.fmt))
    todo: list[Record] = []
    index = DedupIndex(config.near_dup_threshold)
    for text in config.test_texts:
        index.add(text, "test")
    for record in records:
        if record.line_no in done:
            continue
        if not record.input.strip():
            summary.dropped[EMPTY] += 1
        elif config.test_texts and index.find(record.input):
            summary.duplicates["test"] += 1  # labeling it would leak the evaluation set into training
        else:
            todo.append(record)
    model = teacher.settings.model
    retries_before = teacher.stats.retries.copy()

    def job(record: Record) -> Callable[[], Any]:
        async def ask() -> tuple[Record, str | None, list[str]]:
            reasons: list[str] = []
            for attempt in range(config.max_attempts):
                reply = await teacher.chat(
                    teacher_messages(config, record), request_id=f"synth-relabel-{record.line_no}-{attempt}"
                )
                output, reason = check_answer(config, record, reply)
                if output is not None:
                    return record, output, reasons
                reasons.append(reason or EMPTY)
            return record, None, reasons

        return ask

    if progress:
        progress(summary.total_rows)
    with RowWriter(config.out) as writer:

        def handle(result: tuple[Record, str | None, list[str]]) -> None:
            record, output, reasons = result
            summary.requests += len(reasons) + (output is not None)
            summary.generated += len(reasons) + (output is not None)
            summary.dropped.update(reasons)
            if output is None:
                summary.unlabeled += 1
                return
            meta: dict[str, Any] = {
                "source": "synth-relabel",
                "teacher_model": model,
                "prompt_version": RELABEL_VERSION,
                "source_file": config.inputs.name,
                "source_line": record.line_no,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            if record.id is not None:
                meta["source_id"] = record.id
            if record.output is not None:
                meta["previous_output"] = record.output
            context = record.context if config.fmt == "chat" else None
            writer.write(make_row(record.input.strip(), output, meta, config.fmt, context))
            summary.valid += 1
            summary.total_rows += 1
            if config.spec.labels:
                summary.per_label[output] += 1
            if progress:
                progress(summary.total_rows)

        try:
            await run_bounded((job(r) for r in todo), config.concurrency, handle)
        except TeacherError as exc:
            summary.error = summary.stop_reason = str(exc)
        finally:
            summary.retries = teacher.stats.retries - retries_before

    summary.complete = summary.stop_reason is None and summary.unlabeled == 0
    return summary
