"""The options of a route change, parsed and checked in one place for `loraforge route set` and the
dashboard's route form."""

from dataclasses import dataclass, replace

from loraforge.store.output_spec import OutputSpec
from loraforge.store.routes import (
    DEFAULT_FALLBACK,
    DEFAULT_TIMEOUT_MS,
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
