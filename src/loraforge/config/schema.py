"""The fine-tuning config: one pydantic model per YAML section; unknown keys and bad values are errors."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loraforge.config.tasks import (
    DEFAULT_FALLBACK_MARGIN,
    DEFAULT_FALLBACK_MIN_SIMILARITY,
    DEFAULT_FALLBACK_THRESHOLD,
    METRICS_BY_TASK,
    FallbackRule,
    fallback_rule,
    nearest_only,
)
from loraforge.models.aliases import DEFAULT_MODEL


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """Where examples come from. Files may be JSONL, JSON, CSV or Parquet; OpenAI-chat JSONL is detected."""

    train: Path
    validation: Path | None = None
    test: Path | None = None
    validation_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Carved from train when no file.")
    max_train_examples: int | None = Field(None, gt=0)
    max_validation_examples: int | None = Field(200, gt=0)
    stratify_by: str | None = Field(
        None, description="Column to balance when carving validation and sampling max_train_examples."
    )
    seed: int = 42


class PromptConfig(Section):
    """How a record becomes the model's input."""

    template: str = Field("{input}", description="Python format string over the record's columns.")
    system: str | None = None
    chat_template: bool = Field(True, description="Wrap the prompt in the base model's chat template.")


class TargetConfig(Section):
    """What the model must produce: a column, or a template over columns. Chat records: the last reply."""

    column: str | None = "output"
    template: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> "TargetConfig":
        if self.template is not None:
            self.__dict__["column"] = None
        elif self.column is None:
            raise ValueError("set either 'column' or 'template'")
        return self


class AdapterConfig(Section):
    r: int = Field(16, gt=0, le=1024)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names.")

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("must name at least one module, or be 'all-linear'")
        return value


class TrainerConfig(Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Overrides epochs when set.")
    batch_size: int = Field(16, gt=0)
    gradient_accumulation: int = Field(1, gt=0)
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    max_seq_length: int = Field(512, ge=8)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantization: Literal["none", "4bit"] = Field("none", description="4bit = QLoRA via bitsandbytes (CUDA).")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="Under torchrun / --nproc: ddp (each process a whole base) or fsdp (the base sharded).",
    )
    prototype_loss: float = Field(
        0.0,
        ge=0.0,
        description="Weight of the prototype loss (classification): each row's answer state is also trained "
        "toward a running mean of its label's rows and away from the other labels' (train/loss.py); "
        "what the nearest-example classifier compares. 0 = the LM loss alone.",
    )
    eval_every: int | None = Field(None, gt=0, description="Steps between validation-loss evaluations.")
    early_stopping_patience: int | None = Field(None, gt=0, description="Evaluations without improvement.")
    checkpoint_every: int | None = Field(None, gt=0)
    log_every: int = Field(5, gt=0)
    seed: int = 42


class EvaluationConfig(Section):
    task: Literal["classification", "generation", "json"] = "generation"
    metrics: list[str] | None = Field(None, description="Defaults depend on the task.")
    labels: Path | None = Field(None, description="Label set: a JSON list or one label per line.")
    max_new_tokens: int = Field(64, gt=0, le=4096)
    backend: Literal["engine", "hf"] = Field(
        "engine", description="engine: our serving engine, all runs in one batch stream; hf: transformers."
    )
    batch_size: int = Field(32, gt=0, description="Rows per padded batch (hf backend).")
    constrain_to_labels: bool = Field(
        False, description="Classification: decode only strings from the label set (needs `labels`)."
    )
    fallback_label: str | None = Field(
        None,
        description="Classification: the label answered instead when the classifier is unsure (an "
        "out-of-scope or 'other' label): see `fallback_threshold`, `fallback_margin` and "
        "`fallback_min_similarity`. Needs "
        "constrain_to_labels and the engine backend.",
    )
    fallback_threshold: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="The fallback answers when the decoded label's probability is below this (classifier "
        f"decode: default {DEFAULT_FALLBACK_THRESHOLD}; nearest: only where set).",
    )
    fallback_margin: float | None = Field(
        None,
        ge=0.0,
        le=2.0,
        description="Classifier nearest: the fallback label's training rows count this much more similar "
        "(cosine), so a row takes another label only when clearly nearer its examples "
        f"(default {DEFAULT_FALLBACK_MARGIN}).",
    )
    fallback_min_similarity: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Classifier nearest: the fallback answers a row less similar (cosine) than this to its "
        f"nearest training example: one unlike them all (default {DEFAULT_FALLBACK_MIN_SIMILARITY}).",
    )
    classifier: Literal["decode", "nearest"] = Field(
        "decode",
        description="Classification: decode the label (constrained), or answer with the label of the nearest "
        "training example in the adapter's representation (a label index beside the adapter, built by "
        "`loraforge train`; needs constrain_to_labels and the engine backend).",
    )
    split: Literal["test", "validation"] = "test"
    limit: int | None = Field(
        None, gt=0, description="Evaluate only the first N rows (after a seeded shuffle)."
    )

    @model_validator(mode="after")
    def _metrics_fit_task(self) -> "EvaluationConfig":
        if self.constrain_to_labels and (self.task != "classification" or self.labels is None):
            raise ValueError("constrain_to_labels needs task 'classification' and a `labels` file")
        if self.fallback_label is not None and not (self.constrain_to_labels and self.backend == "engine"):
            raise ValueError("fallback_label needs constrain_to_labels and evaluation.backend 'engine'")
        asked = nearest_only(self.fallback_margin, self.fallback_min_similarity)
        if asked and self.classifier != "nearest":
            raise ValueError(f"fallback_{asked} needs classifier 'nearest' (decode uses fallback_threshold)")
        if self.classifier == "nearest" and not (self.constrain_to_labels and self.backend == "engine"):
            raise ValueError(
                "classifier 'nearest' needs constrain_to_labels and evaluation.backend 'engine'"
                " (or set evaluation.classifier: decode)"
            )
        allowed = METRICS_BY_TASK[self.task]
        for name in self.metrics or []:
            if name not in allowed:
                raise ValueError(
                    f"metric '{name}' is not available for task '{self.task}' (choose from {allowed})"
                )
        return self

    def fallback_rule(self) -> FallbackRule:
        """The fallback's rule as the classifier applies it (config/tasks.py)."""
        return fallback_rule(
            self.classifier, self.fallback_threshold, self.fallback_margin, self.fallback_min_similarity
        )


class FloatRange(Section):
    low: float
    high: float
    log: bool = Field(False, description="Sample on a log scale (learning rates).")

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if not self.low < self.high:
            raise ValueError("low must be below high")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class IntRange(Section):
    low: int = Field(gt=0)
    high: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if not self.low <= self.high:
            raise ValueError("low must not exceed high")
        return self


class TuneConfig(Section):
    """`loraforge tune`'s search space; a key set to null keeps the config's own value."""

    learning_rate: FloatRange | None = FloatRange(low=1e-4, high=3e-3, log=True)
    r: list[int] | None = Field([8, 16, 32], description="LoRA ranks to try (alpha stays 2r).")
    epochs: IntRange | None = IntRange(low=1, high=4)
    dropout: FloatRange | None = FloatRange(low=0.0, high=0.1)

    @field_validator("r")
    @classmethod
    def _ranks(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(r <= 0 for r in value)):
            raise ValueError("must list positive ranks")
        return value


class FineTuneConfig(Section):
    """A whole fine-tuning run."""

    base_model: str = DEFAULT_MODEL
    data: DataConfig
    prompt: PromptConfig = PromptConfig()
    target: TargetConfig = TargetConfig()
    adapter: AdapterConfig = AdapterConfig()
    trainer: TrainerConfig = TrainerConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    tune: TuneConfig = TuneConfig()
