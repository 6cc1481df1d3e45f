"""Rows on disk: reading inputs, seeds and test sets (plain or chat JSONL), writing and resuming outputs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraforge.data.sources import iter_jsonl
from loraforge.errors import DataError, LoraforgeError
from loraforge.synth.prompts import Seed
from loraforge.synth.validation import OutputSpec

FORMATS = ("chat", "flat")
INPUT_FIELDS = ("input", "text", "prompt", "question")
OUTPUT_FIELDS = ("output", "label", "completion", "answer")


def message_text(content: Any) -> str:
    """The text of a chat message's content: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


@dataclass
class Record:
    """One input (and maybe its output) read from a file; `context` holds chat messages before the input."""

    line_no: int
    input: str
    output: Any = None
    id: str | None = None
    context: list[dict[str, Any]] = field(default_factory=list)
    chat: bool = False  # read from `messages`, so it can be replayed to the teacher as a conversation


def read_record(row: dict[str, Any], line_no: int, where: str, input_field: str | None = None) -> Record:
    """Interpret one row: `messages` (the last user message is the input), else an input column."""
    meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    row_id = row.get("id", meta.get("id"))
    row_id = None if row_id is None else str(row_id)
    if input_field is None and isinstance(row.get("messages"), list):
        messages = [m for m in row["messages"] if isinstance(m, dict)]
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if not users:
            raise DataError(f"{where}, line {line_no}: the messages hold no user message")
        last = users[-1]
        after = [m for m in messages[last + 1 :] if m.get("role") == "assistant"]
        output = message_text(after[0].get("content")) if after else None
        text = message_text(messages[last].get("content"))
        return Record(line_no, text, output, row_id, messages[:last], chat=True)
    fields = (input_field,) if input_field else INPUT_FIELDS
    for name in fields:
        if name in row:
            value = row[name]
            if not isinstance(value, str):
                raise DataError(f"{where}, line {line_no}: column '{name}' is not a string")
            output = next((row[o] for o in OUTPUT_FIELDS if o in row), None)
            return Record(line_no, value, output, row_id)
    wanted = f"column '{input_field}'" if input_field else "'messages' or one of " + ", ".join(INPUT_FIELDS)
    raise DataError(f"{where}, line {line_no}: no {wanted} (keys: {', '.join(sorted(row)) or 'none'})")


def read_records(path: Path, what: str, input_field: str | None = None) -> list[Record]:
    return [read_record(row, n, f"{what} {path}", input_field) for n, row in iter_jsonl(path, what)]


def load_seeds(path: Path, spec: OutputSpec, input_field: str | None = None) -> list[Seed]:
    """Seed examples with outputs, checked against the output spec so the teacher is shown only valid ones."""
    seeds = []
    for record in read_records(path, "seed examples", input_field):
        if record.output is None:
            raise DataError(
                f"seed examples {path}, line {record.line_no}: no output (expected one of 'messages' "
                f"with an assistant reply, or a column {', '.join(OUTPUT_FIELDS)})"
            )
        output, reason = spec.check_output(record.output)
        if reason or output is None or not record.input.strip():
            raise DataError(
                f"seed examples {path}, line {record.line_no}: invalid example ({reason or 'empty'})"
            )
        seeds.append(Seed(record.id or f"seed-{record.line_no}", record.input.strip(), output))
    return seeds


def load_texts(path: Path, what: str, input_field: str | None = None) -> list[str]:
    return [r.input for r in read_records(path, what, input_field) if r.input.strip()]


def make_row(
    text: str, output: str, metadata: dict[str, Any], fmt: str, context: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """An output row: OpenAI-chat (provenance under `metadata`, valid for OpenAI fine-tuning) or flat."""
    if fmt == "flat":
        return {"input": text, "output": output, **metadata}
    messages = [*(context or []), {"role": "user", "content": text}, {"role": "assistant", "content": output}]
    return {"messages": messages, "metadata": metadata}


@dataclass
class SavedRow:
    input: str
    output: str
    metadata: dict[str, Any]


def parse_saved(row: dict[str, Any]) -> SavedRow | None:
    """Read back a row this module wrote, in either format; None if it is not one."""
    if isinstance(row.get("messages"), list) and len(row["messages"]) >= 2:
        user, assistant = row["messages"][-2], row["messages"][-1]
        if isinstance(user, dict) and isinstance(assistant, dict):
            meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
            return SavedRow(message_text(user.get("content")), message_text(assistant.get("content")), meta)
    if isinstance(row.get("input"), str) and "output" in row:
        meta = {k: v for k, v in row.items() if k not in ("input", "output")}
        return SavedRow(row["input"], row["output"], meta)
    return None


def row_format(row: dict[str, Any]) -> str:
    return "chat" if "messages" in row else "flat"


def load_existing(path: Path, fmt: str) -> list[SavedRow]:
    """Rows already in an output file, for resuming; a half-written last line (a killed run) is cut off."""
    if fmt not in FORMATS:
        raise LoraforgeError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
    if not path.exists():
        return []
    _drop_partial_last_line(path)
    rows: list[SavedRow] = []
    for line_no, row in iter_jsonl(path, "output file"):
        saved = parse_saved(row)
        if saved is None:
            raise DataError(
                f"output file {path}, line {line_no}: not a synth row; pass a new --out to start over"
            )
        if row_format(row) != fmt:
            raise DataError(
                f"output file {path} holds {row_format(row)} rows; resume with --format {row_format(row)} "
                f"or pass a new --out"
            )
        rows.append(saved)
    return rows


def _drop_partial_last_line(path: Path) -> None:
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    head, _, last = data.rpartition(b"\n")
    try:
        json.loads(last)
    except ValueError:
        with path.open("r+b") as fh:
            fh.truncate(len(head) + 1 if head else 0)
        return
    with path.open("ab") as fh:  # a complete last row missing only its newline: keep it
        fh.write(b"\n")


class RowWriter:
    """Appends rows to the output file and flushes each one, so an interrupted run loses nothing it saved."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()  # survives the process being killed; fsync per row would be slow at scale

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
