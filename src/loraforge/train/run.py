"""One fine-tuning run end to end: data, model, LoRA training, saving, evaluation and the model card."""

import json
from pathlib import Path

import torch

from loraforge.config.loading import dump_config
from loraforge.config.schema import FineTuneConfig
from loraforge.data.examples import ExampleBuilder
from loraforge.data.splits import load_splits
from loraforge.data.tokenize import tokenize_example
from loraforge.errors import ConfigError
from loraforge.evaluate.generation import ADAPTER, GenerationModel
from loraforge.evaluate.runner import evaluate_records, open_backend, select_rows, write_report
from loraforge.models import load_tokenizer, resolve_model
from loraforge.train import distributed
from loraforge.train.checkpoint import latest_checkpoint, read_state
from loraforge.train.metrics_log import MetricsLog, plot_losses
from loraforge.train.model_card import write_model_card
from loraforge.train.model_setup import Placement, add_lora, choose_placement, load_base_for_training
from loraforge.train.trainer import LoraTrainer


def run_training(
    config: FineTuneConfig,
    output_dir: Path,
    *,
    resume: bool = False,
    evaluate: bool = True,
    baseline: bool = False,
    show_progress: bool = True,
    on_step=None,
) -> dict:
    """Train an adapter as `config` says into `output_dir`.

    Returns {"summary": ..., "eval": eval report or None, "model": the trained PEFT model in memory}.
    Under torchrun (WORLD_SIZE set) the ranks train together and only rank 0 writes files and evaluates.
    """
    context = distributed.from_environment()
    try:
        return _run(config, output_dir, context, resume, evaluate, baseline, show_progress, on_step)
    finally:
        if context is not None:
            distributed.shutdown()


def _run(config, output_dir, context, resume, evaluate, baseline, show_progress, on_step) -> dict:
    main = context is None or context.is_main
    checkpoint = latest_checkpoint(output_dir / "checkpoints") if resume else None
    if resume and checkpoint is None:
        raise ConfigError(f"--resume: no checkpoint found under {output_dir / 'checkpoints'}")
    resolved = resolve_model(config.base_model)
    tokenizer = load_tokenizer(resolved)
    placement = choose_placement(config.trainer)
    fsdp = context is not None and config.trainer.strategy == "fsdp"
    if context is not None:
        distributed.check_strategy(config)
        device = distributed.init_process_group(context, placement.device)
        placement = Placement(device=device, dtype=placement.dtype)
    splits = load_splits(config.data)
    builder = ExampleBuilder(config.prompt, config.target, tokenizer)
    max_length = config.trainer.max_seq_length
    train = [tokenize_example(builder.build(r), tokenizer, max_length) for r in splits.train]
    validation = [tokenize_example(builder.build(r), tokenizer, max_length) for r in splits.validation]

    # FSDP moves the base to the device one shard at a time: loaded whole, it might not fit there.
    load_at = Placement("cpu", placement.dtype) if fsdp else placement
    base = load_base_for_training(resolved, config.trainer, load_at)
    torch.manual_seed(config.trainer.seed)  # the LoRA init is random: same seed, same starting adapter
    model = add_lora(base, config.adapter, fast_dropout=placement.device == "cpu")
    resumed_step = read_state(checkpoint).step if checkpoint else None
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(dump_config(config))
        metrics = MetricsLog(output_dir / "metrics.jsonl", truncate_after_step=resumed_step)
    else:
        metrics = distributed.NoMetrics()
    args = (model, train, validation, config.trainer, output_dir, tokenizer.pad_token_id, placement.device)
    if context is None:
        trainer = LoraTrainer(*args)
    elif fsdp:
        from loraforge.train.fsdp import FsdpLoraTrainer

        trainer = FsdpLoraTrainer(*args, context=context)
    else:
        trainer = distributed.DistributedLoraTrainer(*args, context=context)
    result = trainer.train(metrics, resume=resume, on_step=on_step, show_progress=show_progress and main)
    weights = trainer.adapter_weights()  # gathered on every rank under FSDP (collective)
    if not main:
        return {"summary": None, "eval": None, "model": model}

    model.save_pretrained(output_dir / "adapter", safe_serialization=True, state_dict=weights)
    tokenizer.save_pretrained(output_dir / "adapter")
    plot_losses(metrics.read(), output_dir / "loss.png")
    summary = {
        "base_model": config.base_model,
        "train_examples": len(train),
        "validation_examples": len(validation),
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "train_seconds": round(result.train_seconds, 2),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "final_train_loss": result.final_train_loss,
        "best_eval_loss": result.best_eval_loss,
        "stopped_early": result.stopped_early,
        "device": placement.device,
        "processes": context.world_size if context else 1,
        "dtype": str(placement.dtype).removeprefix("torch."),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    report = None
    test_records = splits.test if config.evaluation.split == "test" else splits.validation
    if evaluate and test_records:
        rows = select_rows(test_records, config.evaluation.limit, config.data.seed)
        if config.evaluation.backend == "hf":  # the trained model as it is in memory
            generator = GenerationModel(model, tokenizer, placement.device)
        else:
            generator = open_backend(config, {ADAPTER: output_dir / "adapter"}, placement.device)
        report = evaluate_records(
            generator, builder, rows, config.evaluation, baseline=baseline, show_progress=show_progress
        )
        write_report(report, output_dir / "eval.json")
    (output_dir / "README.md").write_text(write_model_card(config, summary, report))
    return {"summary": summary, "eval": report, "model": model}
