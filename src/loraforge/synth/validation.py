"""What a valid row is: the output kind (labels, JSON Schema or free text) and the checks rows must pass."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraforge.data.labels import load_labels
from loraforge.errors import DataError, LoraforgeError
from loraforge.synth.dedup import jaccard, normalize, shingles

# Drop reasons, counted in the summary under these exact names.
MALFORMED = "malformed_json"
TRUNCATED = "truncated"
MISSING_FIELDS = "missing_fields"
BAD_TYPE = "bad_type"
EMPTY = "empty"
ECHO = "echo"
NOT_IN_LABELS = "not_in_labels"
SCHEMA_VIOLATION = "schema_violation"

# An input this similar to an instruction text is the teacher repeating the prompt, not a new example.
ECHO_SIMILARITY = 0.8
ECHO_MIN_CHARS = 16

__all__ = ["load_labels"]  # the one label-file reader (loraforge.data.labels), used here too


def load_schema(path: Path) -> dict[str, Any]:
    """Read and check a JSON Schema file."""
    import jsonschema

    if not path.is_file():
        raise DataError(f"output schema {path} does not exist")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"output schema {path} is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise DataError(f"output schema {path} must be a JSON object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise DataError(f"output schema {path} is not a valid JSON Schema: {exc.message}") from None
    return schema


@dataclass
class OutputSpec:
    """The kind of output the task has; exactly one of `labels` and `schema`, or neither for free text."""

    labels: list[str] | None = None
    schema: dict[str, Any] | None = None
    _by_folded: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.labels is not None and self.schema is not None:
            raise LoraforgeError("pass either --labels or --output-schema, not both")
        if self.labels:
            self._by_folded = {label.casefold(): label for label in self.labels}
        if self.schema is not None:
            import jsonschema

            self._validator = jsonschema.validators.validator_for(self.schema)(self.schema)

    @property
    def kind(self) -> str:
        return "classification" if self.labels else "json" if self.schema is not None else "text"

    def canonical_label(self, value: str) -> str | None:
        """The label `value` names, ignoring case, surrounding space and quotes; None if it is not a label."""
        return self._by_folded.get(value.strip().strip("\"'`").strip().casefold())

    def check_output(self, value: Any) -> tuple[str | None, str | None]:
        """Return (output as stored text, None) when valid, else (None, drop reason)."""
        if self.labels:
            if isinstance(value, dict) and len(value) == 1:
                value = next(iter(value.values()))  # {"label": "x"} is a common way to answer
            if not isinstance(value, str):
                return None, NOT_IN_LABELS
            if not value.strip():
                return None, EMPTY
            label = self.canonical_label(value)
            return (label, None) if label else (None, NOT_IN_LABELS)
        if self.schema is not None:
            if isinstance(value, str):
                if not value.strip():
                    return None, EMPTY
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    return None, SCHEMA_VIOLATION
            if not self._validator.is_valid(value):
                return None, SCHEMA_VIOLATION
            return json.dumps(value, ensure_ascii=False), None
        if isinstance(value, str):
            return (value.strip(), None) if value.strip() else (None, EMPTY)
        if value is None or value == {} or value == []:
            return None, EMPTY
        return json.dumps(value, ensure_ascii=False), None


def is_echo(text: str, prompt_texts: list[str]) -> bool:
    """True when `text` repeats an instruction: equal to one, contained in one, or nearly identical to one."""
    norm = normalize(text)
    if len(norm) < ECHO_MIN_CHARS:
        return any(norm == normalize(prompt) for prompt in prompt_texts)  # e.g. a copied placeholder
    grams = shingles(norm)
    for prompt in prompt_texts:
        other = normalize(prompt)
        if norm in other or jaccard(grams, shingles(other)) >= ECHO_SIMILARITY:
            return True
    return False


def check_example(
    item: Any, spec: OutputSpec, prompt_texts: list[str]
) -> tuple[tuple[str, str] | None, str | None]:
    """Validate one generated item; return ((input, output), None) or (None, drop reason)."""
    if not isinstance(item, dict) or "input" not in item or "output" not in item:
        return None, MISSING_FIELDS
    raw_input = item["input"]
    if raw_input is None or (isinstance(raw_input, str) and not raw_input.strip()):
        return None, EMPTY
    if not isinstance(raw_input, str):
        return None, BAD_TYPE
    text = raw_input.strip()
    if is_echo(text, prompt_texts):
        return None, ECHO
    output, reason = spec.check_output(item["output"])
    if reason:
        return None, reason
    assert output is not None
    if spec.kind == "text" and is_echo(output, [text, *prompt_texts]):
        return None, ECHO
    return (text, output), None
