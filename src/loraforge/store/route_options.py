"""The options of a route change, parsed and checked in one place for `loraforge route set`, `compare`'s
output options and the dashboard's route form."""

from dataclasses import dataclass, replace
from pathlib import Path

from loraforge.errors import LoraforgeError
from loraforge.store.routes import (
    DEFAULT_FALLBACK,
    DEFAULT_TIMEOUT_MS,
    OUTPUT_KINDS,
    OutputSpec,
    set_route,
    validate_route,
)
from loraforge.store.store import Store
from loraforge.store.tables import RouteChange


def parse_fallback(value: str) -> tuple[str, ...]:
    """'on-error,on-invalid' -> ('on-error', 'on-invalid'); 'none' -> ()."""
    if value.strip().lower() == "none":
        return ()
    return tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))


def output_spec(kind: str | None, labels: Path | None, schema: Path | None) -> OutputSpec:
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


@dataclass(frozen=True)
class RouteOptions:
    """A route to set, checked when made (LoraforgeError naming the bad option), applied by `apply`."""

    stage: str
    adapter: str | None = None
    percent: float | None = None
    fallback: tuple[str, ...] = DEFAULT_FALLBACK
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    output: OutputSpec | None = None
    model: str | None = None  # few-shot only, like k and min_score
    k: int | None = None
    min_score: float | None = None

    def __post_init__(self) -> None:
        validate_route(
            self.stage,
            self.adapter,
            self.percent,
            self.fallback,
            self.timeout_ms,
            model=self.model,
            k=self.k,
            min_score=self.min_score,
        )

    def keeping_checks_of(self, last: RouteChange | None) -> "RouteOptions":
        """These options with what the task's `last` route checked and how it fell back (the dashboard's
        form asks only for stage, adapter and percent)."""
        if last is None:
            return self
        return replace(
            self,
            fallback=tuple(last.fallback) if last.fallback else DEFAULT_FALLBACK,
            timeout_ms=last.timeout_ms or DEFAULT_TIMEOUT_MS,
            output=OutputSpec.from_json(last.output),
        )

    def apply(
        self, store: Store, task: str, *, actor: str | None = None, reason: str | None = None
    ) -> RouteChange:
        """Append the route change to the task's history (`store.routes.set_route`)."""
        return set_route(
            store,
            task,
            self.stage,
            self.adapter,
            percent=self.percent,
            fallback=self.fallback,
            timeout_ms=self.timeout_ms,
            output=self.output,
            actor=actor,
            reason=reason,
            model=self.model,
            k=self.k,
            min_score=self.min_score,
        )
