"""Read JSON out of a model's answer: code fences, prose around it, one object, a list, a truncated tail."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from loraforge.synth.validation import MALFORMED, TRUNCATED

_FENCE = re.compile(r"```[\w-]*\s*\n?(.*?)(?:```|$)", re.DOTALL)
_DECODER = json.JSONDecoder()
# Wrapper keys a model may put around the list it was asked for.
_LIST_KEYS = ("examples", "data", "items", "results", "rows")
_OPEN = re.compile(r"[\[{]")
# Prose may contain stray brackets; trying every one of them on a long garbage answer would be quadratic.
MAX_STARTS = 50


@dataclass
class ParsedBatch:
    """The items found in one answer; `tail_problem` says why the rest (if any) was unusable."""

    items: list[Any] = field(default_factory=list)
    tail_problem: str | None = None
    broken: int = 0  # objects that look like examples (they mention "input") but are not valid JSON


def _candidates(text: str) -> list[str]:
    """Texts to try, best first: the contents of code fences, then the whole answer."""
    fenced = [m.group(1).strip() for m in _FENCE.finditer(text)]
    return [c for c in fenced if c] + [text.strip()]


def _closing(text: str, start: int) -> int | None:
    """Index just past the JSON value opening at `start`, by bracket matching; None if the text ends first."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth <= 0:
                return i + 1
    return None


def _decode_problem(text: str, start: int) -> str:
    return MALFORMED if _closing(text, start) is not None else TRUNCATED


def _parse_array(text: str, start: int) -> tuple[ParsedBatch, int]:
    """Decode the elements of the array opening at `start` one by one, keeping those before any breakage."""
    batch = ParsedBatch()
    pos = start + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            batch.tail_problem = TRUNCATED  # the answer ended inside the list
            return batch, pos
        if text[pos] == "]":
            return batch, pos + 1
        try:
            item, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            # An element that never closes was cut off; one that closes but does not parse is malformed.
            batch.tail_problem = _decode_problem(text, pos) if text[pos] in "[{" else MALFORMED
            return batch, len(text)
        batch.items.append(item)


def _parse_at(text: str, start: int) -> tuple[ParsedBatch, int]:
    """The value opening at `start`, and where it ends."""
    if text[start] == "[":
        return _parse_array(text, start)
    try:
        obj, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError:
        closing = _closing(text, start)
        if closing is None:
            return ParsedBatch(tail_problem=TRUNCATED), len(text)
        if '"input"' in text[start:closing]:
            return ParsedBatch(broken=1), closing  # a broken example: count it and skip past it
        return ParsedBatch(tail_problem=MALFORMED), start + 1  # a bracket in prose: try the next one
    return ParsedBatch(items=_unwrap(obj)), end


def parse_batch(text: str, finish_reason: str | None = None) -> ParsedBatch:
    """Collect the examples of every JSON value in `text`, left to right, skipping prose around them.

    Handles a list, a wrapper object, one object, or one object per line (inside code fences or not). A value
    cut off by the end of the answer ends the scan as `truncated`; a bracket in prose that opens no valid
    JSON is skipped; a broken object that mentions "input" is counted in `broken`; an answer without any
    JSON is `malformed_json`.
    """
    batch = ParsedBatch()
    pos, misses, saw_json = 0, 0, False
    while misses < MAX_STARTS:
        match = _OPEN.search(text, pos)
        if match is None:
            break
        found, pos = _parse_at(text, match.start())
        batch.items.extend(found.items)
        batch.broken += found.broken
        if found.tail_problem == TRUNCATED or (found.tail_problem and found.items):
            # The answer ended inside this value, or a list broke mid-way: nothing after it is trustworthy.
            batch.tail_problem = found.tail_problem
            return _mark_length(batch, finish_reason)
        if found.tail_problem or found.broken:
            misses += 1
        else:
            saw_json = True
    if not batch.items and not batch.broken and not saw_json:
        batch.tail_problem = MALFORMED  # no JSON at all
    return _mark_length(batch, finish_reason)


def _unwrap(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        for key in _LIST_KEYS:
            if isinstance(obj.get(key), list):
                return obj[key]
    return [obj]


def _mark_length(batch: ParsedBatch, finish_reason: str | None) -> ParsedBatch:
    # An answer that stopped at the token limit before giving any example was cut off, not empty.
    if finish_reason == "length" and batch.tail_problem is None and not batch.items and not batch.broken:
        batch.tail_problem = TRUNCATED
    return batch


def parse_value(text: str) -> Any:
    """One answer value for relabeling: JSON if the answer is JSON (fenced or not), else the text."""
    for candidate in _candidates(text):
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    stripped = text.strip()
    for match in re.finditer(r"[\[{]", stripped):
        try:
            return _DECODER.raw_decode(stripped, match.start())[0]
        except json.JSONDecodeError:
            break
    return stripped
