"""A task's flywheel policy: one YAML file, validated like the training config (unknown keys are errors).

```yaml
task: banking77
train: {config: examples/banking77.yaml, set: ["trainer.epochs=2"]}
data: {reviewed_only: true, use_corrections: true, dedupe: true, test_fraction: 0.2}
trigger: {min_new_examples: 50, every: 1d}
gate: "accuracy >= baseline + 0.02"
output: {kind: classification, labels_file: labels.json}
rollout:
  - {stage: shadow, min_calls: 20}
  - {stage: canary, percent: 10, min_calls: 50}
  - {stage: full}
limits: {max_fallback_rate: 0.2, max_invalid_rate: 0.2, min_feedback_score: 0.5}
retention: {keep_days: 30, keep_rows: 100000}
serving: {general_url: "https://api.openai.com/v1", specialist_url: "http://127.0.0.1:8000/v1"}
```
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loraforge.compare.gate import parse_gate
from loraforge.config.loading import format_validation_error, parse_override, read_yaml_mapping
from loraforge.data.labels import load_labels
from loraforge.errors import ConfigError, LoraforgeError
from loraforge.spans import span_seconds
from loraforge.store.output_spec import OUTPUT_KINDS, OutputSpec
from loraforge.store.routes import ADAPTER_NAME_RE


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _span(value: str | None, key: str) -> str | None:
    if value is not None and span_seconds(value) is None:
        raise ValueError(f"{key}: {value!r} is not a span such as 30m, 12h or 1d")
    return value


class TrainSection(Section):
    config: Path = Field(description="The training config template; its data files are the dataset's.")
    set: list[str] = Field(default_factory=list, description="key.path=value overrides, as `train --set`.")
    runs_dir: Path = Field(Path("runs/flywheel"), description="Each turn trains into RUNS_DIR/TASK/vN.")

    @field_validator("set")
    @classmethod
    def _overrides(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_override(text)
        return value


class DataSection(Section):
    """Which logged calls become examples (the filter of `loraforge dataset build`)."""

    reviewed_only: bool = Field(True, description="Only calls with a correction or a score >= min_score.")
    min_score: float = 1.0
    use_corrections: bool = True
    dedupe: bool = True
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    since: str | None = None


class TriggerSection(Section):
    """A turn starts when at least `min_new_examples` usable examples are not yet in a dataset version and,
    with `every`, the last turn started at least that long ago (min_new_examples: 1 + every: a schedule)."""

    min_new_examples: int = Field(50, ge=1)
    every: str | None = None

    _check_every = field_validator("every")(classmethod(lambda cls, v: _span(v, "every")))


class RolloutStep(Section):
    stage: Literal["shadow", "canary", "full"]
    percent: float | None = Field(None, gt=0, lt=100)
    min_calls: int = Field(0, ge=0, description="Calls the stage must see before the next one.")
    min_duration: str | None = Field(None, description="And at least this long, e.g. 1d.")

    _check_duration = field_validator("min_duration")(classmethod(lambda cls, v: _span(v, "min_duration")))

    @model_validator(mode="after")
    def _percent(self) -> "RolloutStep":
        if (self.stage == "canary") != (self.percent is not None):
            raise ValueError("percent is required for a canary step and applies to canary steps only")
        return self


class LimitsSection(Section):
    """Live limits of an adapter in shadow, canary and full; beyond them it is rolled back."""

    max_fallback_rate: float = Field(0.2, ge=0, le=1)
    max_invalid_rate: float = Field(0.2, ge=0, le=1)
    min_feedback_score: float | None = None
    min_calls: int = Field(10, ge=1, description="Calls needed before a rate is judged.")
    window_calls: int = Field(200, ge=1, description="After promotion: judge the newest this many calls.")


class RetentionSection(Section):
    keep_days: int | None = Field(None, ge=0)
    keep_rows: int | None = Field(None, ge=0)


class OutputSection(Section):
    kind: Literal[OUTPUT_KINDS] = "text"  # type: ignore[valid-type]
    labels: list[str] = Field(default_factory=list)
    labels_file: Path | None = None

    def spec(self) -> OutputSpec:
        labels = self.labels or (load_labels(self.labels_file) if self.labels_file else [])
        return OutputSpec(self.kind, tuple(labels))


class ServingSection(Section):
    """Where the general model and the adapters' server (`loraforge serve`) answer; keys come from the
    environment (never written in the policy)."""

    general_url: str
    general_model: str | None = Field(None, description="Default: the model the task's calls ask for.")
    general_api_key_env: str | None = None
    specialist_url: str
    specialist_api_key_env: str | None = None
    specialist_admin_key_env: str | None = Field(
        None, description="Admin key to register adapters (else the server's --adapter-root must allow)."
    )
    prices_file: Path | None = Field(None, description="Extra price table for the comparison's cost.")

    def key(self, which: Literal["general", "specialist", "admin"]) -> str | None:
        name = {
            "general": self.general_api_key_env,
            "specialist": self.specialist_api_key_env,
            "admin": self.specialist_admin_key_env,
        }[which]
        if name is None:
            return None
        value = os.environ.get(name)
        if not value:
            raise LoraforgeError(f"serving: the environment variable {name} is not set")
        return value


class CompareSection(Section):
    max_tokens: int = Field(64, gt=0)
    concurrency: int = Field(4, gt=0)
    k: int = Field(8, gt=0, description="Examples a few-shot side is prompted with.")


class FlywheelPolicy(Section):
    task: str
    adapter_prefix: str | None = Field(None, description="Adapters are named PREFIX-vN (default: the task).")
    train: TrainSection
    data: DataSection = Field(default_factory=DataSection)
    trigger: TriggerSection = Field(default_factory=TriggerSection)
    gate: str = "accuracy >= baseline"
    compare: CompareSection = Field(default_factory=CompareSection)
    output: OutputSection = Field(default_factory=OutputSection)
    rollout: list[RolloutStep] = Field(
        default_factory=lambda: [
            RolloutStep(stage="shadow", min_calls=20),
            RolloutStep(stage="canary", percent=10, min_calls=50),
            RolloutStep(stage="full"),
        ]
    )
    limits: LimitsSection = Field(default_factory=LimitsSection)
    retention: RetentionSection = Field(default_factory=RetentionSection)
    serving: ServingSection
    lock_lease: str = Field("5m", description="A crashed turner's lock frees after this long.")

    _check_lease = field_validator("lock_lease")(classmethod(lambda cls, v: _span(v, "lock_lease")))

    @field_validator("gate")
    @classmethod
    def _gate(cls, value: str) -> str:
        try:
            parse_gate(value)
        except LoraforgeError as exc:
            raise ValueError(str(exc).removeprefix("--gate: ")) from None
        return value

    @model_validator(mode="after")
    def _rollout(self) -> "FlywheelPolicy":
        if not self.rollout or self.rollout[-1].stage != "full":
            raise ValueError("rollout must end with a full step")
        if any(step.stage == "full" for step in self.rollout[:-1]):
            raise ValueError("rollout: full must be the last step")
        name = f"{self.adapter_prefix or self.task}-v1"
        if not ADAPTER_NAME_RE.match(name):
            raise ValueError(f"adapter names such as {name!r} would not be valid; set adapter_prefix")
        return self

    @property
    def dataset_name(self) -> str:
        return f"{self.task}-flywheel"

    def adapter_name(self, version: int) -> str:
        return f"{self.adapter_prefix or self.task}-v{version}"


def load_policy(path: Path) -> FlywheelPolicy:
    """Read and validate a policy file; relative paths in it are taken from the file's folder."""
    raw = read_yaml_mapping(path, "policy", "sections (task, train, serving, ...)")
    try:
        policy = FlywheelPolicy.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid policy {path}: {format_validation_error(exc)}") from None
    base = path.parent
    train = policy.train
    train.config = _relative(train.config, base)
    if policy.serving.prices_file is not None:
        policy.serving.prices_file = _relative(policy.serving.prices_file, base)
    if policy.output.labels_file is not None:
        policy.output.labels_file = _relative(policy.output.labels_file, base)
    return policy


def _relative(path: Path, base: Path) -> Path:
    """A relative path as it is when it exists from the working directory, else from the policy's folder."""
    path = path.expanduser()
    if path.is_absolute() or path.exists():
        return path
    return base / path
