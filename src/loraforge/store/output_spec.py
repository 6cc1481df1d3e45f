"""What a valid answer of a task is (a route's, a comparison's, a flywheel policy's): any text, one label of a
set, or JSON (optionally matching a schema)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraforge.errors import LoraforgeError

OUTPUT_KINDS = ("text", "classification", "json")


@dataclass(frozen=True)
class OutputSpec:
    """What a valid answer of the task is: any text, one label of a set, or JSON (optionally a schema)."""

    kind: str = "text"
    labels: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": list(self.labels), "schema": self.schema}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "OutputSpec":
        data = data or {}
        return cls(data.get("kind") or "text", tuple(data.get("labels") or ()), data.get("schema"))


def parse_output_options(kind: str | None, labels: Path | None, schema: Path | None) -> OutputSpec:
    """The output spec from --kind/--labels/--json-schema (labels imply classification, a schema JSON)."""
    from loraforge.data.labels import load_labels
    from loraforge.synth.validation import load_schema

    if labels and schema:
        raise LoraforgeError("pass either --labels or --json-schema, not both")
    kind = kind or ("classification" if labels else "json" if schema else "text")
    if kind not in OUTPUT_KINDS:
        raise LoraforgeError(f"--kind {kind!r}: choose one of {', '.join(OUTPUT_KINDS)}")
    if kind == "classification" and not labels:
        raise LoraforgeError("--kind classification needs --labels FILE (the task's label set)")
    if kind != "classification" and labels:
        raise LoraforgeError(f"--labels applies to --kind classification, not {kind}")
    if kind != "json" and schema:
        raise LoraforgeError(f"--json-schema applies to --kind json, not {kind}")
    return OutputSpec(
        kind, tuple(load_labels(labels)) if labels else (), load_schema(schema) if schema else None
    )
