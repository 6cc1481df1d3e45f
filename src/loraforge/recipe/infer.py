"""A complete fine-tuning config inferred from a task's data, with the reason for each choice (`init`).

The rules, in one place:
- task: `json` when nearly every target parses as a JSON object or array; `classification` when the targets
  are short and repeat (at most half as many distinct values as rows, at most MAX_CLASSES); else `generation`.
- classification: the label set is written beside the config and decoding is constrained to it (free
  decoding invents labels that do not exist); `max_new_tokens` fits the longest tokenized target
  (free text: a quarter more, `new_tokens`). The answer is the label of the nearest training example in
  the adapter's representation (`classifier: nearest`, classify/label_index.py): on Banking77 validation rows
  it beats decoding the label at 5, 10 and 25 examples a label (README "Fine-tuning": `init_transfer.py
  --eval-on validation` records both answers).
  A label that means "none of the others" (`oos`, `other`...) becomes the fallback (`fallback_label`),
  answered unless a row is clearly nearer another label's examples than the fallback's (`fallback_margin`;
  on the Banking77 out-of-scope split it beat thresholding the decoded label's probability) and similar
  enough to them (`fallback_min_similarity`: a row unlike every training example is out of scope).
- prompt: the input column alone, in the model's chat template under a one-line system prompt that names
  only the answer's form (SYSTEM_PROMPTS). Without one, SmolLM2's template injects its own identity prompt
  ("You are a helpful AI assistant named SmolLM...", 11 more tokens a row: 22% of a Banking77 row, paid in
  every training step and every request). The label names are *not* listed in the prompt: the adapter learns
  them, and a 150-label list would be ~600 tokens a row, 15x the cost of training and serving.
- `max_seq_length` covers the longest prompt + target the data holds (rounded up, capped by the model).
- the schedule scales with the data: about TARGET_STEPS optimizer steps, so small data gets more epochs
  (between MIN_EPOCHS and MAX_EPOCHS), with early stopping on a validation split guarding against overfitting.
  For classification that split is stratified over the labels: with 10 examples a label, a random 10% carve
  takes 2-3 of some labels' examples and none of others'; a stratified one takes one from each.
- the adapter: LoRA on every linear layer, rank RANK; a classification gets CLASSIFICATION_RANK, since the
  answer state its nearest example compares gains from it (one larger adapter to serve: the engine pads
  every resident adapter to the largest rank).
- classification trains with a prototype loss beside the LM loss (PROTOTYPE_LOSS, train/loss.py): the
  answer state the nearest example is found by is pulled toward its own label's running mean and away from
  the others'; on its own the LM loss shapes that state only to predict the label's first token.
- few-shot classification (at most FEW_PER_LABEL examples a label, with a test file to evaluate on): no
  validation split and no early stopping. Every example trains: the carve would take one of each label's
  few, and a validation loss over one row a label is too noisy to stop on (`holdout`).
"""

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraforge.config.schema import AdapterConfig, PromptConfig, TargetConfig
from loraforge.config.tasks import DEFAULT_FALLBACK_MARGIN, DEFAULT_FALLBACK_MIN_SIMILARITY
from loraforge.data.examples import ExampleBuilder
from loraforge.data.sources import read_records
from loraforge.errors import DataError

MAX_CLASSES = 1000
MAX_LABEL_CHARS = 64  # longer targets read as text to generate, not labels
JSON_SHARE = 0.95
BATCH_SIZE = 16
TARGET_STEPS = 300
MIN_EPOCHS, MAX_EPOCHS = 2, 10
MAX_SEQ_CAP = 2048
VALIDATION_FRACTION = 0.1  # carved from train for early stopping
# Classification: the prototype loss's weight beside the LM loss (train/loss.py); measured on Banking77
# validation rows at 10 a label against the LM loss alone (README "Fine-tuning").
PROTOTYPE_LOSS = 1.0
# LoRA rank (alpha twice it). A classification's answer state, the vector the nearest example is found by,
# gains from the larger rank (README "Fine-tuning": Banking77 validation rows at 10 a label, with and without
# an `oos` label); other tasks keep the schema's default, the first value tried.
RANK = AdapterConfig.model_fields["r"].default
CLASSIFICATION_RANK = 32
FEW_PER_LABEL = 10  # examples a label (on average) up to which a classification keeps all for training
# Label names (lowercased, letters only) that mean "none of the other labels".
FALLBACK_NAMES = {
    "oos",
    "outofscope",
    "outofdomain",
    "ood",
    "other",
    "none",
    "unknown",
    "nointent",
    "fallback",
}
SYSTEM_PROMPTS = {
    "classification": "Answer with the label.",
    "json": "Answer with JSON.",
    "generation": "Answer.",
}


@dataclass
class Inferred:
    """The config as a dict (validated by the caller), the label set if any, and why each choice was made."""

    config: dict[str, Any]
    labels: list[str] | None
    reasons: list[str] = field(default_factory=list)


def _is_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict | list)
    except (json.JSONDecodeError, TypeError):
        return False


def infer_task(targets: list[str]) -> tuple[str, str]:
    """(task, why) from the training targets."""
    distinct = set(targets)
    json_share = sum(_is_json(t) for t in targets) / len(targets)
    if json_share >= JSON_SHARE:
        return "json", f"{json_share:.0%} of targets parse as JSON"
    longest = max(len(t) for t in distinct)
    if len(distinct) <= min(MAX_CLASSES, len(targets) / 2) and longest <= MAX_LABEL_CHARS:
        return "classification", (
            f"{len(distinct)} distinct targets in {len(targets)} rows, at most {longest} characters: labels"
        )
    return "generation", f"{len(distinct)} distinct targets in {len(targets)} rows: free text"


def make_prompt(task: str, input_column: str, *, chat: bool) -> PromptConfig:
    """The input column under a short system prompt in the chat template; without a chat template, the
    input and a newline (the target must not run on from the input's last word)."""
    if chat:
        return PromptConfig(template=f"{{{input_column}}}", system=SYSTEM_PROMPTS[task], chat_template=True)
    return PromptConfig(template=f"{{{input_column}}}\n", chat_template=False)


def fallback_label(labels: list[str]) -> str | None:
    """The label that names "none of the others" (out of scope, other, unknown...), if the set has one.
    Such a class is every input unlike the rest: a few examples cannot cover it, so a model trained on them
    rarely answers it; a low probability for the label it chose is the better signal (FALLBACK_NAMES)."""
    found = [label for label in labels if re.sub(r"[^a-z]", "", label.lower()) in FALLBACK_NAMES]
    return found[0] if len(found) == 1 else None


def new_tokens(task: str, longest_target: int) -> int:
    """`max_new_tokens`: a label is spelled out exactly; free text gets a quarter more than the longest
    training target. Held-out targets rarely run longer (ViGGO: 0 of 714 validation MRs past the longest of
    300 training ones; GSM8K: 1 in 1,500 past 1.25x), and a greedy output past that is a repetition loop
    whose length is pure decode cost (see benchmarks/init_transfer.py)."""
    if task == "classification":
        return longest_target + 2
    return min(4096, longest_target + longest_target // 4 + 8)


def steps_per_epoch(rows: int, validation_fraction: float = VALIDATION_FRACTION) -> int:
    return math.ceil(rows * (1 - validation_fraction) / BATCH_SIZE)


def schedule(rows: int, validation_fraction: float = VALIDATION_FRACTION) -> tuple[int, float, str]:
    """(epochs, learning rate, why) for `rows` examples, `validation_fraction` of which are carved off."""
    epochs = max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(TARGET_STEPS * BATCH_SIZE / rows)))
    lr = 1e-3 if rows < 20_000 else 5e-4
    steps = steps_per_epoch(rows, validation_fraction) * epochs
    return epochs, lr, f"{rows} rows: {epochs} epochs of batch {BATCH_SIZE} (~{steps} steps), lr {lr:g}"


def adapter_rank(task: str) -> tuple[int, str]:
    """(rank, why): the LoRA rank on every linear layer, alpha twice it (RANK, CLASSIFICATION_RANK)."""
    if task == "classification":
        return CLASSIFICATION_RANK, (
            f"adapter: rank {CLASSIFICATION_RANK} on every linear layer (classification: the answer state"
            " the nearest example is found by gains from the larger rank)"
        )
    return RANK, f"adapter: rank {RANK} on every linear layer"


def holdout(rows: int, labels: list[str] | None, *, has_test: bool) -> tuple[float, str]:
    """(validation_fraction, why): the share of train carved off for early stopping. A classification with
    at most FEW_PER_LABEL examples a label keeps them all when a test file is there to evaluate on: on
    Banking77 with 5 and 10 a label and on its variant with an out-of-scope label, training on everything for
    the whole schedule scored higher on held-out validation rows than carving and stopping early, every time
    (benchmarks/init_transfer.py --eval-on validation; the table is in the README, "Fine-tuning")."""
    if labels is None:
        return (
            VALIDATION_FRACTION,
            f"validation: {VALIDATION_FRACTION:.0%} of train carved for early stopping",
        )
    per_label = rows / len(labels)
    if per_label <= FEW_PER_LABEL and has_test:
        return 0.0, (
            f"validation: none, {per_label:.1f} examples a label all train (at most {FEW_PER_LABEL}: a"
            " carve would take one of each label's few, and one row a label is too few to stop early on)"
        )
    return VALIDATION_FRACTION, (
        f"validation: {VALIDATION_FRACTION:.0%} of train carved label by label (stratify_by): no label"
        " gives up more than its share of examples"
    )


def infer_config(
    train: Path,
    input_column: str,
    target_column: str,
    tokenizer,
    *,
    test: Path | None,
    base_model: str,
    labels_path: Path,
) -> Inferred:
    """Read `train` and infer everything a config needs (see the module docstring); a classification
    config names `labels_path` as its label set, for the caller to write."""
    records = read_records(train)
    if not records:
        raise DataError(f"{train} has no rows")
    for column in (input_column, target_column):
        if column not in records[0]:
            raise DataError(f"{train} has no column '{column}' (it has: {', '.join(map(str, records[0]))})")
    targets = [str(r[target_column]) for r in records]
    task, why = infer_task(targets)
    reasons = [f"task {task}: {why}"]
    prompt = make_prompt(task, input_column, chat=bool(getattr(tokenizer, "chat_template", None)))
    reasons.append(
        f"prompt: the '{input_column}' column"
        + (
            f" in the chat template, system prompt {prompt.system!r}"
            if prompt.chat_template
            else " and a newline"
        )
    )
    builder = ExampleBuilder(prompt, TargetConfig(column=target_column), tokenizer)
    lengths = []
    for record in records:
        example = builder.build(record)
        text = example.prompt + example.completion
        lengths.append(len(tokenizer(text, add_special_tokens=False).input_ids))
    context = getattr(tokenizer, "model_max_length", MAX_SEQ_CAP)
    max_seq = min(MAX_SEQ_CAP, context, 32 * math.ceil((max(lengths) + 8) / 32))
    reasons.append(f"max_seq_length {max_seq}: the longest prompt + target is {max(lengths)} tokens")
    target_tokens = max(len(tokenizer(t, add_special_tokens=False).input_ids) for t in set(targets))
    max_new = new_tokens(task, target_tokens)
    reasons.append(f"max_new_tokens {max_new}: the longest target is {target_tokens} tokens")
    labels = sorted(set(targets)) if task == "classification" else None
    fraction, why_holdout = holdout(len(records), labels, has_test=test is not None)
    epochs, lr, why = schedule(len(records), fraction)
    reasons.append(why)
    rank, why_rank = adapter_rank(task)
    reasons.append(why_rank)
    evaluation: dict[str, Any] = {"task": task, "max_new_tokens": max_new}
    if labels is not None:
        evaluation |= {"labels": str(labels_path), "constrain_to_labels": True, "classifier": "nearest"}
        reasons.append(f"decoding constrained to the {len(labels)} labels: every output is a valid label")
        reasons.append(
            "classifier nearest: each row takes the label of its most similar training example in the"
            " adapter's representation (train writes the index beside the adapter)"
        )
        fallback = fallback_label(labels)
        if fallback is not None:
            evaluation["fallback_label"] = fallback
            reasons.append(
                f"label '{fallback}' reads as out of scope: a row takes another label only when it is at"
                f" least {DEFAULT_FALLBACK_MARGIN} more similar (cosine) to that label's nearest example than"
                f" to the nearest '{fallback}' example (evaluation.fallback_margin), and at least"
                f" {DEFAULT_FALLBACK_MIN_SIMILARITY} similar to it (evaluation.fallback_min_similarity)"
            )
    data: dict[str, Any] = {"train": str(train), "validation_fraction": fraction, "seed": 42}
    if labels is not None:
        data["stratify_by"] = target_column  # also balances a max_train_examples sample
    reasons.append(why_holdout)
    if test is not None:
        data["test"] = str(test)
    else:
        evaluation["split"] = "validation"
        reasons.append("no --test file: evaluation runs on the validation split carved from train")
    config = {
        "base_model": base_model,
        "data": data,
        "prompt": prompt.model_dump(exclude_defaults=True) | {"chat_template": prompt.chat_template},
        "target": {"column": target_column},
        "adapter": AdapterConfig(r=rank, alpha=2 * rank).model_dump(),  # the schema's dropout and modules
        "trainer": {
            "epochs": epochs,
            "batch_size": BATCH_SIZE,
            "learning_rate": lr,
            "scheduler": "cosine",
            "warmup_ratio": 0.05,
            "max_seq_length": max_seq,
            "seed": 42,
        },
        "evaluation": evaluation,
    }
    if labels is not None:
        config["trainer"]["prototype_loss"] = PROTOTYPE_LOSS
        reasons.append(
            f"prototype_loss {PROTOTYPE_LOSS}: each row's answer state is also trained toward its label's"
            " running mean and away from the other labels', the vector the nearest example is found by"
        )
    if fraction:
        every = max(10, steps_per_epoch(len(records), fraction) * epochs // 10)  # ~10 validations a run
        config["trainer"] |= {"eval_every": every, "early_stopping_patience": 3}
    return Inferred(config, labels, reasons)
