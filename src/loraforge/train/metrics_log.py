"""The run's `metrics.jsonl` (one JSON object per logged event) and its `loss.png` curve."""

import json
import os
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path, truncate_after_step: int | None = None) -> None:
        self.path = path
        if truncate_after_step is not None and path.exists():
            # On resume, drop rows logged after the checkpoint so the file tells one consistent story.
            rows = [row for row in self.read() if row.get("step", 0) <= truncate_after_step]
            # Replaced atomically: a kill during the rewrite must not lose the history before the checkpoint.
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
            os.replace(tmp, path)
        elif truncate_after_step is None:
            path.write_text("")

    def write(self, **row) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def read(self) -> list[dict]:
        """The logged rows; a last line without its newline is a write a kill cut short, and is dropped."""
        if not self.path.exists():
            return []
        complete = self.path.read_text().split("\n")[:-1]
        return [json.loads(line) for line in complete if line.strip()]


def plot_losses(rows: list[dict], out: Path) -> None:
    """Train and validation loss against optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(row["step"], row["train_loss"]) for row in rows if "train_loss" in row]
    evals = [(row["step"], row["eval_loss"]) for row in rows if "eval_loss" in row]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (completion tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
