"""Versioned prompt templates for asking a teacher to generate or to label examples.

Change a template's wording only together with its version: every saved row records the version it came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from loraforge.synth.validation import OutputSpec

GENERATE_VERSION = "generate-v1"
RELABEL_VERSION = "relabel-v1"

GENERATE_SYSTEM = "You create training data for a machine-learning task. You answer with JSON only."
DIVERSITY_RULE = (
    "Make every new example different from the examples shown and from each other: "
    "vary the wording, length, tone, details and situations."
)
FORMAT_RULE = (
    'Return only a JSON list of {k} objects in this form: [{{"input": "<a new input>", "output": {output}}}]'
)
# What the format line shows as the output; a model copying a placeholder verbatim is echoing the prompt.
OUTPUT_PLACEHOLDERS = {
    "classification": '"<one of the labels>"',
    "json": "<a JSON object>",
    "text": '"<its output>"',
}
INPUT_PLACEHOLDER = "<a new input>"
RELABEL_SYSTEM = "You label inputs for a machine-learning task."
DEFAULT_RELABEL_TASK = "Give the correct output for the input."


@dataclass(frozen=True)
class Seed:
    """A seed example shown to the teacher; `id` is recorded in the provenance of rows it inspired."""

    id: str
    input: str
    output: str


def output_rules(spec: OutputSpec) -> str:
    if spec.labels:
        return "The output is exactly one of these labels:\n" + "\n".join(spec.labels)
    if spec.schema is not None:
        return "The output is a JSON object that matches this JSON Schema:\n" + json.dumps(
            spec.schema, indent=1
        )
    return "The output is the text an excellent assistant would answer."


def _seed_output(seed: Seed, spec: OutputSpec) -> Any:
    # Show JSON outputs as JSON, not as a string holding JSON, so the teacher copies the right shape.
    if spec.schema is not None:
        try:
            return json.loads(seed.output)
        except json.JSONDecodeError:
            return seed.output
    return seed.output


def generate_messages(
    description: str, spec: OutputSpec, seeds: list[Seed], k: int, focus_labels: list[str] | None = None
) -> list[dict[str, str]]:
    """The chat messages asking for `k` new examples, shown `seeds`, optionally aimed at `focus_labels`."""
    parts = [f"Task: {description}", output_rules(spec)]
    if seeds:
        shown = "\n".join(
            json.dumps({"input": s.input, "output": _seed_output(s, spec)}, ensure_ascii=False) for s in seeds
        )
        parts.append("Examples of the task:\n" + shown)
    request = f"Write {k} new examples. {DIVERSITY_RULE}"
    if focus_labels:
        request += (
            " Use these outputs for the new examples, one each, in this order: "
            + ", ".join(focus_labels)
            + "."
        )
    parts.append(request)
    parts.append(format_rule(spec, k))
    return [{"role": "system", "content": GENERATE_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def format_rule(spec: OutputSpec, k: int) -> str:
    return FORMAT_RULE.format(k=k, output=OUTPUT_PLACEHOLDERS[spec.kind])


def generate_schema(spec: OutputSpec, k: int) -> dict[str, Any]:
    """The JSON Schema of an answer holding `k` examples, for a teacher that takes structured outputs.

    The root is an object (OpenAI's structured outputs require one), holding the list under "examples", a
    wrapper `parse_batch` reads. A label output becomes an enum, so a constrained teacher cannot invent one.
    """
    if spec.labels:
        output: dict[str, Any] = {"type": "string", "enum": list(spec.labels)}
    elif spec.schema is not None:
        output = spec.schema
    else:
        output = {"type": "string"}
    example = {
        "type": "object",
        "properties": {"input": {"type": "string"}, "output": output},
        "required": ["input", "output"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"examples": {"type": "array", "items": example, "minItems": k, "maxItems": k}},
        "required": ["examples"],
        "additionalProperties": False,
    }


def generate_response_format(spec: OutputSpec, k: int) -> dict[str, Any]:
    """OpenAI's `response_format` asking for `generate_schema`; strict unless the task brings its own schema
    (a user's schema need not meet strict mode's rules, e.g. every property required)."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "examples",
            "schema": generate_schema(spec, k),
            "strict": spec.schema is None,
        },
    }


def generate_instruction_texts(description: str, spec: OutputSpec) -> list[str]:
    """Texts of the generation prompt other than seeds; a generated input resembling one is a prompt echo.

    Labels are among them: a small teacher often writes a label name as the input.
    """
    placeholders = [INPUT_PLACEHOLDER, *(p.strip('"') for p in OUTPUT_PLACEHOLDERS.values())]
    fixed = [description, GENERATE_SYSTEM, DIVERSITY_RULE, FORMAT_RULE.format(k=1, output="")]
    return fixed + placeholders + list(spec.labels or [])


def relabel_rules(spec: OutputSpec) -> str:
    if spec.labels:
        return "Reply with exactly one label from the list and nothing else."
    if spec.schema is not None:
        return "Reply with only a JSON object that matches the schema, and nothing else."
    return "Reply with only the output, and nothing else."


def relabel_messages(description: str | None, spec: OutputSpec, text: str) -> list[dict[str, str]]:
    """The chat messages asking the teacher for the output of one input."""
    system = "\n\n".join(
        [
            RELABEL_SYSTEM,
            f"Task: {description or DEFAULT_RELABEL_TASK}",
            output_rules(spec),
            relabel_rules(spec),
        ]
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def relabel_instruction_texts(description: str | None) -> list[str]:
    return [description or DEFAULT_RELABEL_TASK, RELABEL_SYSTEM]


def rotate(items: list[Any], index: int, count: int, repeat: bool = False) -> list[Any]:
    """The `index`-th window of `count` items, wrapping around: requests cover all items evenly.

    Without `repeat` a window holds each item at most once, so it is shorter when `count > len(items)`.
    """
    if not items or count <= 0:
        return []
    start = (index * count) % len(items)
    size = count if repeat else min(count, len(items))
    return [items[(start + j) % len(items)] for j in range(size)]
