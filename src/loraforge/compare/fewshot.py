"""A few-shot side of a comparison: each test input with its k most similar examples from the SAME dataset
version's train split laid out in it (never from the test split being compared)."""

from typing import Any

from loraforge.compare.items import Source
from loraforge.curation.call_examples import input_hash
from loraforge.errors import DataError, LoraforgeError
from loraforge.fewshot import ExampleIndex, fewshot_messages
from loraforge.fewshot.examples import dedupe, examples_from_jsonl


def fewshot_inputs(source: Source, k: int) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    """The prompts a few-shot side is asked, in item order, and a summary of the examples (for the result)."""
    if source.train_path is None:
        raise LoraforgeError("a few-shot side needs --dataset: its examples come from the train split")
    tested = {input_hash(item.messages) for item in source.items}
    # The dataset's split by input hash already keeps test inputs out of train; this holds even for a
    # hand-edited dataset, so no answer under test is ever shown as an example.
    rows = [
        e
        for e in dedupe(examples_from_jsonl(source.train_path))
        if input_hash(list(e.messages)) not in tested
    ]
    if not rows:
        raise DataError(f"{source.train_path}: no train examples for a few-shot side")
    index = ExampleIndex.from_rows(rows)
    prompts = [fewshot_messages(item.messages, index.top_k(item.messages, k)) for item in source.items]
    summary = {
        "k": k,
        "examples": len(index),
        "from": source.description.replace("test split", "train split"),
    }
    return prompts, summary
