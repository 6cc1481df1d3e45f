"""Training runs: the directories under --runs-dir that `loraforge train` wrote (metrics.jsonl, summary.json,
eval.json, config.yaml, README.md)."""

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from loraforge.ui.settings import MAX_FILE_BYTES, MAX_METRIC_ROWS

RUN_MARKERS = ("metrics.jsonl", "config.yaml")
RUNNING_IF_WRITTEN_WITHIN_S = 120  # no summary.json yet and metrics written this recently: still training


@dataclass
class RunInfo:
    id: str  # the path under the runs directory, e.g. "banking77" or "sweep/trial-3"
    path: Path
    status: str  # "running", "finished", "stopped"
    modified: datetime
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def base_model(self) -> str:
        return str(self.config.get("base_model") or self.summary.get("base_model") or "")

    @property
    def train_data(self) -> str:
        return str((self.config.get("data") or {}).get("train") or "")


def list_runs(root: Path) -> list[RunInfo]:
    """Runs directly under `root` or one level deeper (a sweep's trials), newest first."""
    if not root.is_dir():
        return []
    found = []
    for candidate in [*root.iterdir(), *(p for d in root.iterdir() if d.is_dir() for p in d.iterdir())]:
        if candidate.is_dir() and any((candidate / m).is_file() for m in RUN_MARKERS):
            found.append(run_info(root, candidate))
    return sorted(found, key=lambda r: r.modified, reverse=True)


def resolve_run(root: Path, run_id: str) -> Path | None:
    """The run directory named `run_id`, or None when it is not a run inside `root` (no escaping it)."""
    base = root.resolve()
    path = (base / run_id).resolve()
    if not path.is_relative_to(base) or path == base or not path.is_dir():
        return None
    return path if any((path / m).is_file() for m in RUN_MARKERS) else None


def run_info(root: Path, path: Path) -> RunInfo:
    mtimes = [(path / f).stat().st_mtime for f in (*RUN_MARKERS, "summary.json") if (path / f).is_file()]
    modified = max(mtimes) if mtimes else path.stat().st_mtime
    summary = read_json(path / "summary.json") or {}
    if summary:
        status = "finished"
    elif time.time() - modified < RUNNING_IF_WRITTEN_WITHIN_S:
        status = "running"
    else:
        status = "stopped"
    return RunInfo(
        id=str(path.resolve().relative_to(root.resolve())),
        path=path,
        status=status,
        modified=datetime.fromtimestamp(modified, UTC).replace(tzinfo=None),
        config=read_yaml(path / "config.yaml") or {},
        summary=summary,
    )


def read_text(path: Path) -> str | None:
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    text = data[:MAX_FILE_BYTES].decode("utf-8", "replace")
    return text + ("\n… (truncated)" if len(data) > MAX_FILE_BYTES else "")


def read_json(path: Path) -> Any:
    text = read_text(path)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def read_yaml(path: Path) -> Any:
    text = read_text(path)
    try:
        return yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return None


def read_metrics(path: Path) -> dict[str, list]:
    """Curves from metrics.jsonl: train loss, validation loss, learning rate, tokens/s by step.

    A half-written last line (the run is writing it) is skipped, not an error.
    """
    curves: dict[str, list] = {
        "train_step": [],
        "train_loss": [],
        "eval_step": [],
        "eval_loss": [],
        "learning_rate": [],
        "tokens_per_second": [],
    }
    file = path / "metrics.jsonl"
    if not file.is_file():
        return curves
    with file.open(encoding="utf-8", errors="replace") as handle:
        for n, line in enumerate(handle):
            if n >= MAX_METRIC_ROWS:
                break
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict) or not isinstance(row.get("step"), int | float):
                continue
            if isinstance(row.get("eval_loss"), int | float):
                curves["eval_step"].append(row["step"])
                curves["eval_loss"].append(row["eval_loss"])
            if isinstance(row.get("train_loss"), int | float):
                curves["train_step"].append(row["step"])
                curves["train_loss"].append(row["train_loss"])
                curves["learning_rate"].append(row.get("learning_rate"))
                curves["tokens_per_second"].append(row.get("tokens_per_second"))
    return curves
