"""What a search leaves beside its trials: `trials.json` (every trial's state, loss and parameters) and
`tune.png` (validation loss per trial, pruned ones marked, and the best so far)."""

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loraforge.tune.search import TuneResult


def trial_rows(study) -> list[dict]:
    return [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "last_reported": max(t.intermediate_values.items())[1] if t.intermediate_values else None,
            "params": t.params,
            "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
            "run_dir": t.user_attrs.get("run_dir"),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def write_report(study, result: "TuneResult", output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = trial_rows(study)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "trials.json").write_text(json.dumps(rows, indent=2) + "\n")
    complete = [(r["number"], r["value"]) for r in rows if r["state"] == "complete"]
    pruned = [
        (r["number"], r["last_reported"]) for r in rows if r["state"] == "pruned" and r["last_reported"]
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    if complete:
        ax.plot(*zip(*complete, strict=True), "o", label="complete")
        best, running = [], float("inf")
        for number, value in complete:
            running = min(running, value)
            best.append((number, running))
        ax.step(*zip(*best, strict=True), where="post", label="best so far")
    if pruned:
        ax.plot(*zip(*pruned, strict=True), "x", label="pruned (last reported)")
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation loss")
    ax.set_title(f"{result.study}: best trial {result.best_trial} ({result.best_value:.4f})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output_dir / "tune.png", dpi=110)
    plt.close(fig)
