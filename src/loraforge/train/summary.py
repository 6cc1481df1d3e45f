"""What a training run hands back: the loop's `TrainResult` with the run's facts, typed end to end.

`summary.json` is `RunSummary.to_json()`; the CLI, the demo, the tuner and the model card read the attributes.
"""

from dataclasses import dataclass
from typing import Any

from loraforge.train.trainer import TrainResult


@dataclass(frozen=True)
class RunSummary:
    """A finished run: what it trained on, where, and the training loop's result."""

    base_model: str
    train_examples: int
    validation_examples: int
    device: str
    processes: int
    dtype: str
    training: TrainResult

    def to_json(self) -> dict[str, Any]:
        """The `summary.json` document (flat, rounded for reading)."""
        t = self.training
        return {
            "base_model": self.base_model,
            "train_examples": self.train_examples,
            "validation_examples": self.validation_examples,
            "steps": t.steps,
            "tokens_seen": t.tokens_seen,
            "train_seconds": round(t.train_seconds, 2),
            "tokens_per_second": round(t.tokens_per_second, 1),
            "final_train_loss": t.final_train_loss,
            "best_eval_loss": t.best_eval_loss,
            "stopped_early": t.stopped_early,
            "device": self.device,
            "processes": self.processes,
            "dtype": self.dtype,
        }

    def headline(self) -> str:
        """One line for a terminal: steps, time, speed, precision and device."""
        t = self.training
        return (
            f"trained {t.steps} steps on {self.train_examples} examples in {t.train_seconds:.0f} s "
            f"({t.tokens_per_second:,.0f} tokens/s, {self.dtype} on {self.device}, "
            f"{self.processes} process(es))"
        )


@dataclass
class TrainingRun:
    """`run_training`'s result. Ranks other than 0 under torchrun write nothing: their `summary` is None."""

    summary: RunSummary | None
    eval_report: dict[str, Any] | None  # the eval.json document, None when no evaluation ran
    model: Any  # the trained PEFT model, in memory
