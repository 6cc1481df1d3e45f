"""The run summary: what was asked, what came back, what was kept, and why the rest was dropped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass
class Summary:
    """Counts: `requests`..`retries` cover this run only, `total_rows` and `per_label` the whole file."""

    command: str
    requested: int
    already_saved: int = 0
    requests: int = 0
    generated: int = 0
    valid: int = 0
    unlabeled: int = 0
    dropped: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)
    retries: Counter = field(default_factory=Counter)
    per_label: Counter = field(default_factory=Counter)
    total_rows: int = 0
    complete: bool = False
    stop_reason: str | None = None
    error: str | None = None  # the teacher failure that stopped the run, if any

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "requested": self.requested,
            "already_saved": self.already_saved,
            "requests": self.requests,
            "generated": self.generated,
            "valid": self.valid,
            "unlabeled": self.unlabeled,
            "dropped": dict(self.dropped),
            "duplicates": dict(self.duplicates),
            "retries": dict(self.retries),
            "per_label": dict(self.per_label),
            "total_rows": self.total_rows,
            "complete": self.complete,
            "stop_reason": self.stop_reason,
            "error": self.error,
        }


def render(summary: Summary, console: Console) -> None:
    """Print the summary as tables; per-label counts make class imbalance visible."""
    table = Table(title=f"synth {summary.command}", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    rows = [
        ("requested rows", summary.requested),
        ("already saved (resumed)", summary.already_saved),
        ("teacher requests", summary.requests),
        ("examples received", summary.generated),
        ("valid rows saved", summary.valid),
        ("rows in file", summary.total_rows),
    ]
    if summary.command == "relabel":
        rows.append(("inputs left unlabeled", summary.unlabeled))
    rows += [(f"dropped: {reason}", n) for reason, n in sorted(summary.dropped.items())]
    rows += [(f"duplicate: {kind}", n) for kind, n in sorted(summary.duplicates.items())]
    rows += [(f"retried: {cause}", n) for cause, n in sorted(summary.retries.items())]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    if summary.per_label:
        labels = Table(title="rows per label (whole file)")
        labels.add_column("label")
        labels.add_column("rows", justify="right")
        for label, n in sorted(summary.per_label.items(), key=lambda kv: (-kv[1], kv[0])):
            labels.add_row(label, str(n))
        console.print(labels)
    if summary.stop_reason:
        console.print(f"[yellow]stopped early: {summary.stop_reason}[/yellow]")
