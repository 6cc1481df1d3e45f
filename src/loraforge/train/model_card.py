"""The run's README.md: what was trained, on what, how, and how well."""

import json

from loraforge.config.schema import FineTuneConfig
from loraforge.train.summary import RunSummary


def _metric_lines(eval_report: dict | None) -> list[str]:
    if not eval_report:
        return ["No evaluation was run (no test split configured)."]
    lines = [
        f"Task `{eval_report['task']}` on the `{eval_report['split']}` split, {eval_report['rows']} rows.",
        "",
    ]
    results = eval_report["results"]
    names = list(results)
    lines.append("| metric | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    metrics = list(dict.fromkeys(m for r in results.values() for m in r))
    for metric in metrics:
        cells = [results[name].get(metric) for name in names]
        shown = [json.dumps(c) if isinstance(c, dict) else f"{c:.4f}" for c in cells]
        lines.append(f"| {metric} | " + " | ".join(shown) + " |")
    return lines


def write_model_card(config: FineTuneConfig, summary: RunSummary, eval_report: dict | None) -> str:
    """The run's README.md: data, hyperparameters, training and evaluation."""
    a, t, d, result = config.adapter, config.trainer, config.data, summary.training
    lines = [
        f"# LoRA adapter for `{config.base_model}`",
        "",
        "Trained with loraforge. Load it with `peft.PeftModel.from_pretrained(base_model, 'adapter')`.",
        "",
        "## Data",
        f"- train: `{d.train}` ({summary.train_examples} examples used)",
        f"- validation: {summary.validation_examples} examples"
        + (f" from `{d.validation}`" if d.validation else f" (fraction {d.validation_fraction} of train)"),
        f"- test: `{d.test}`" if d.test else "- test: none",
        f"- prompt template: `{config.prompt.template!r}` (chat template: {config.prompt.chat_template})",
        "",
        "## Hyperparameters",
        f"- LoRA: r={a.r}, alpha={a.alpha}, dropout={a.dropout}, target_modules={a.target_modules}",
        f"- optimizer steps: {result.steps}, batch size {t.batch_size} "
        f"x gradient accumulation {t.gradient_accumulation}",
        f"- learning rate {t.learning_rate} ({t.scheduler}, warmup ratio {t.warmup_ratio}), "
        f"max length {t.max_seq_length}",
        f"- precision: {summary.dtype} on {summary.device}, seed {t.seed}",
        "",
        "## Training",
        f"- tokens seen: {result.tokens_seen:,}, training time {result.train_seconds:.1f} s "
        f"({result.tokens_per_second:,.0f} tokens/s)",
        f"- final train loss: {result.final_train_loss:.4f}" if result.final_train_loss else "",
        f"- best validation loss: {result.best_eval_loss:.4f}" if result.best_eval_loss else "",
        "- curves: `loss.png`, per-step values: `metrics.jsonl`",
        "",
        "## Evaluation",
        *_metric_lines(eval_report),
        "",
    ]
    return "\n".join(line for line in lines if line is not None)
