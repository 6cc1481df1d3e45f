"""Training throughput: loraforge vs a plain HF `Trainer` + PEFT baseline, same data, same steps, one run.

Both sides load the same dense weights (the resolver's safetensors conversion of the embedded model), use the
same LoRA config, the same tokenized examples (prompt masked) and the same batch size and number of steps.
The baseline keeps Trainer's defaults (fp32, random order, dynamic padding, full-vocabulary logits).
Tokens/s counts real (non-padding) tokens per second of training step time.

    .venv/bin/python benchmarks/train_throughput.py                # banking77, 30 steps each
    .venv/bin/python benchmarks/train_throughput.py --steps 10     # quicker
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from loraforge.config import load_config
from loraforge.data.examples import ExampleBuilder
from loraforge.data.splits import load_splits
from loraforge.data.tokenize import tokenize_example
from loraforge.hardware import describe
from loraforge.models import load_tokenizer, resolve_model
from loraforge.train.metrics_log import MetricsLog
from loraforge.train.model_setup import add_lora, choose_placement, load_base_for_training
from loraforge.train.trainer import LoraTrainer

ROOT = Path(__file__).resolve().parents[1]


def prepare(config_path: Path, examples: int):
    config = load_config(config_path, [f"data.max_train_examples={examples}", "data.validation_fraction=0"])
    resolved = resolve_model(config.base_model)
    tokenizer = load_tokenizer(resolved)
    builder = ExampleBuilder(config.prompt, config.target, tokenizer)
    records = load_splits(config.data).train
    tokenized = [
        tokenize_example(builder.build(r), tokenizer, config.trainer.max_seq_length) for r in records
    ]
    return config, resolved, tokenizer, tokenized


def run_loraforge(config, resolved, tokenizer, tokenized, steps: int, batch_size: int) -> tuple[int, float]:
    trainer_config = config.trainer.model_copy(update={"max_steps": steps, "batch_size": batch_size})
    placement = choose_placement(trainer_config)
    model = add_lora(load_base_for_training(resolved, trainer_config, placement), config.adapter)
    with tempfile.TemporaryDirectory() as out:
        trainer = LoraTrainer(
            model, tokenized, [], trainer_config, Path(out), tokenizer.pad_token_id, placement.device
        )
        result = trainer.train(MetricsLog(Path(out) / "metrics.jsonl"), show_progress=False)
    return result.tokens_seen, result.train_seconds


class _Examples(torch.utils.data.Dataset):
    def __init__(self, tokenized) -> None:
        self.rows = [{"input_ids": t.input_ids, "labels": t.labels} for t in tokenized]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def run_hf_baseline(config, resolved, tokenizer, tokenized, steps: int, batch_size: int) -> tuple[int, float]:
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from loraforge.train.model_setup import lora_config

    base = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32)
    model = get_peft_model(base, lora_config(config.adapter, base))
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    counted = {"tokens": 0}

    def count_tokens(module, args, kwargs):
        counted["tokens"] += int(kwargs["attention_mask"].sum())

    # Counting in the forward pass (not the collator) ignores batches the data loader prefetches.
    model.register_forward_pre_hook(count_tokens, with_kwargs=True)

    class StepTimer(TrainerCallback):
        seconds = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            StepTimer.seconds += time.perf_counter() - self.started

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            learning_rate=config.trainer.learning_rate,
            logging_steps=steps,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=config.trainer.seed,
            use_cpu=not torch.cuda.is_available(),
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=_Examples(tokenized),
            data_collator=collator,
            callbacks=[StepTimer()],
        )
        started = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - started
    return counted["tokens"], StepTimer.seconds or wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "banking77.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--examples", type=int, default=1000)
    args = parser.parse_args()
    print(f"CPU: {describe()}", flush=True)
    config, resolved, tokenizer, tokenized = prepare(args.config, args.examples)
    rows = []
    for name, runner in [("HF Trainer + PEFT (defaults)", run_hf_baseline), ("loraforge", run_loraforge)]:
        tokens, seconds = runner(config, resolved, tokenizer, tokenized, args.steps, args.batch_size)
        rows.append((name, tokens, seconds, tokens / seconds))
        print(f"{name}: {tokens} tokens in {seconds:.1f} s -> {tokens / seconds:,.0f} tokens/s", flush=True)
    baseline = rows[0][3]
    print()
    print("| run | steps | tokens | seconds | tokens/s | vs baseline |")
    print("|---|---|---|---|---|---|")
    for name, tokens, seconds, speed in rows:
        print(
            f"| {name} | {args.steps} | {tokens} | {seconds:.1f} | {speed:,.0f} | {speed / baseline:.2f}x |"
        )


if __name__ == "__main__":
    main()
