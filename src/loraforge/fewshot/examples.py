"""A few-shot example (a prompt and its good answer) and where examples come from: a dataset version's
train file, or the store's calls that people corrected or scored well."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import or_

from loraforge.curation.call_examples import call_to_example, input_hash
from loraforge.curation.rows import BATCH_ROWS, feedback_query
from loraforge.errors import DataError, LoraforgeError
from loraforge.fewshot.settings import MAX_STORE_EXAMPLES
from loraforge.store.store import Store
from loraforge.store.tables import Call, Feedback


@dataclass(frozen=True)
class FewShotExample:
    """The prompt turns of an example (system/user/earlier assistant) and its good answer."""

    messages: tuple[dict[str, str], ...]
    output: str
    call_id: str | None = None  # the logged call it came from (store examples)

    @classmethod
    def of(cls, messages: list[dict[str, str]], output: str, call_id: str | None = None) -> "FewShotExample":
        return cls(tuple({"role": m["role"], "content": m["content"]} for m in messages), output, call_id)

    @property
    def text(self) -> str:
        """What retrieval matches on: the example's input without its system prompt."""
        return query_text(list(self.messages))


def query_text(messages_or_text: list[dict[str, Any]] | str) -> str:
    """The text a request is matched on: its user turns (the system prompt is shared by every call of a
    task, so it would only dilute the match). Non-text contents are skipped."""
    if isinstance(messages_or_text, str):
        return messages_or_text
    parts = [
        m["content"]
        for m in messages_or_text
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)
    ]
    return "\n".join(parts)


def examples_from_jsonl(path: Path) -> list[FewShotExample]:
    """The examples of an OpenAI-chat JSONL file (a dataset version's train split): the last message of each
    line is the assistant's answer, the ones before it the prompt."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                *prompt, answer = json.loads(line)["messages"]
                if answer["role"] != "assistant" or not prompt:
                    raise ValueError("the last message must be the assistant's")
                rows.append(FewShotExample.of(prompt, answer["content"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{lineno}: not an OpenAI-chat example ({exc})") from exc
    return rows


def examples_from_store(
    store: Store,
    task: str,
    *,
    min_score: float | None = None,
    use_corrections: bool = True,
    limit: int = MAX_STORE_EXAMPLES,
) -> list[FewShotExample]:
    """The task's newest good examples, newest first, one per input: calls whose latest feedback corrected
    the output (the correction is the answer) or, when `min_score` is given, scored at least `min_score`.

    Without `min_score` only corrections count: an example is pasted verbatim into every similar prompt, so
    it must be an answer a person vouched for, not merely one nobody complained about.
    """
    if min_score is None and not use_corrections:
        raise LoraforgeError("few-shot examples need corrections (use_corrections) or a min_score")
    good = []
    if use_corrections:
        good.append(Feedback.corrected_output.is_not(None))
    if min_score is not None:
        good.append(Feedback.score >= min_score)
    query = (
        feedback_query(task, None).where(or_(*good)).order_by(None).order_by(Call.time.desc(), Call.id.desc())
    )
    examples: list[FewShotExample] = []
    seen: set[str] = set()
    with store.db.connect() as conn:
        for row in conn.execution_options(yield_per=BATCH_ROWS).execute(query):
            example = call_to_example(row)
            if example is None or example.input_hash in seen:
                continue  # unusable (tools, images), or an older answer to an input already held
            seen.add(example.input_hash)
            corrected = use_corrections and row.corrected_output is not None
            output = row.corrected_output if corrected else example.output
            examples.append(FewShotExample.of(example.messages, output, row.id))
            if len(examples) >= limit:
                break
    return examples


def dedupe(examples: list[FewShotExample]) -> list[FewShotExample]:
    """One example per normalized input (the first one wins)."""
    seen: set[str] = set()
    kept = []
    for example in examples:
        key = input_hash(list(example.messages))
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept
