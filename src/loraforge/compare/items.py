"""What is compared: inputs with their reference (a dataset's test split) or logged shadow pairs."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from loraforge.compare.sides import Answer
from loraforge.curation.call_examples import call_to_example, output_text
from loraforge.curation.datasets import get_dataset, parse_since
from loraforge.errors import DataError, LoraforgeError
from loraforge.store.store import Store
from loraforge.store.tables import Call, Feedback


@dataclass
class Item:
    messages: list[dict[str, str]]
    reference: str | None
    candidate: Answer | None = None
    baseline: Answer | None = None


@dataclass
class Source:
    description: str  # "dataset NAME v3 (test split)" or "shadow pairs since ..."
    items: list[Item]
    content_hash: str | None = None  # the dataset version's hash
    train_path: Path | None = None  # the dataset version's train split: few-shot examples come from it only


def dataset_items(store: Store, spec: str) -> Source:
    """The test split of dataset NAME[:VERSION] (the newest version without one)."""
    name, _, version = spec.partition(":")
    if version and not version.isdigit():
        raise LoraforgeError(f"--dataset {spec!r}: the version after ':' must be a number")
    dataset = get_dataset(store, name, int(version) if version else None)
    path = Path(dataset.path) / "test.jsonl"
    if not path.is_file():
        raise DataError(f"dataset {name} v{dataset.version}: {path} is missing")
    items = []
    for lineno, line in enumerate(path.open(encoding="utf-8"), 1):
        try:
            messages = json.loads(line)["messages"]
            *prompt, answer = messages
            if answer["role"] != "assistant" or not prompt:
                raise ValueError("the last message must be the assistant's")
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{lineno}: not an OpenAI-chat example ({exc})") from exc
        items.append(Item(prompt, answer["content"]))
    if not items:
        raise DataError(f"dataset {name} v{dataset.version} has an empty test split: nothing to compare")
    return Source(
        f"dataset {name} v{dataset.version} (test split)",
        items,
        dataset.content_hash,
        Path(dataset.path) / "train.jsonl",
    )


def shadow_items(store: Store, task: str, candidate: str, since: str) -> Source:
    """Logged pairs: each successful shadow answer of `candidate` with the general answer it mirrored.
    The reference is the newest corrected output from feedback on the general call, when there is one."""
    primary = aliased(Call)
    query = (
        select(Call, primary)
        .join(primary, primary.id == Call.shadow_of)
        .where(
            Call.task == task,
            Call.served_by == candidate,
            Call.status == "ok",
            primary.status == "ok",
            Call.time >= parse_since(since),
        )
        .order_by(primary.time, primary.id)
    )
    with Session(store.db) as session:
        pairs = [tuple(row) for row in session.execute(query)]
        ids = [p.id for _, p in pairs]
        corrections = {
            fb.call_id: fb.corrected_output
            for fb in session.scalars(
                select(Feedback).where(Feedback.call_id.in_(ids)).order_by(Feedback.time, Feedback.id)
            )
            if fb.corrected_output is not None
        }
        items = []
        for shadow, general in pairs:
            example = call_to_example(general)
            text = output_text(shadow.endpoint, shadow.response_body or {})
            if example is None or text is None:
                continue
            item = Item(example.messages, corrections.get(general.id))
            item.baseline = _logged(general, example.output)
            item.candidate = _logged(shadow, text)
            items.append(item)
    if not items:
        raise DataError(f"no shadow pairs of {candidate} for task {task!r} since {since}")
    return Source(f"shadow pairs since {since}", items)


def _logged(call: Call, text: str) -> Answer:
    return Answer(text, call.latency_ms or 0.0, call.prompt_tokens, call.completion_tokens)


def inputs_hash(items: list[Item]) -> str:
    """sha256 of the compared inputs and references, in order: equal hashes mean the same test."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.messages, item.reference], ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()
