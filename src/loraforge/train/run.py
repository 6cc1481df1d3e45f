"""One fine-tuning run end to end: data, model, LoRA training, saving, evaluation and the model card."""

import json
from collections.abc import Callable
from pathlib import Path

import torch

from loraforge.classify.build import build_label_index
from loraforge.classify.label_index import INDEX_FILE, check_labels
from loraforge.config.loading import dump_config
from loraforge.config.schema import FineTuneConfig
from loraforge.data.examples import ExampleBuilder
from loraforge.data.labels import load_labels
from loraforge.data.splits import load_splits
from loraforge.data.tokenize import tokenize_example
from loraforge.errors import ConfigError
from loraforge.evaluate.runner import evaluate_config, evaluation_rows, open_backend, write_report
from loraforge.inference.hf import ADAPTER, GenerationModel
from loraforge.models import load_tokenizer, resolve_model
from loraforge.train import distributed
from loraforge.train.checkpoint import TrainerState, latest_checkpoint, read_state
from loraforge.train.distributed import DistContext
from loraforge.train.metrics_log import MetricsLog, plot_losses
from loraforge.train.model_card import write_model_card
from loraforge.train.model_setup import Placement, add_lora, choose_placement, load_base_for_training
from loraforge.train.summary import RunSummary, TrainingRun
from loraforge.train.trainer import LoraTrainer


def checkpoint_to_resume(output_dir: Path, resume: bool) -> Path | None:
    """Where a run in `output_dir` starts, decided once: with `resume` its newest checkpoint (there must be
    one), else from scratch (None)."""
    if not resume:
        return None
    checkpoint = latest_checkpoint(output_dir / "checkpoints")
    if checkpoint is None:
        raise ConfigError(f"--resume: no checkpoint found under {output_dir / 'checkpoints'}")
    return checkpoint


def seeded_lora(
    base: torch.nn.Module, config: FineTuneConfig, context: DistContext | None, fast_dropout: bool
) -> torch.nn.Module:
    """`base` with fresh LoRA weights: the one place a run seeds torch's RNG. The LoRA init comes from
    `trainer.seed`, the same adapter on every rank; then dropout draws from `seed + rank`, each rank its own
    masks (rank 0 as a single process). A resumed run then restores its checkpoint's RNG instead."""
    torch.manual_seed(config.trainer.seed)
    model = add_lora(base, config.adapter, fast_dropout=fast_dropout)
    torch.manual_seed(config.trainer.seed + (context.rank if context else 0))
    return model


def run_training(
    config: FineTuneConfig,
    output_dir: Path,
    *,
    resume: bool = False,
    evaluate: bool = True,
    baseline: bool = False,
    show_progress: bool = True,
    on_step: Callable[[TrainerState], None] | None = None,
) -> TrainingRun:
    """Train an adapter as `config` says into `output_dir`, then evaluate it on the config's split.

    Under torchrun (WORLD_SIZE set) the ranks train together and only rank 0 writes files and evaluates.
    """
    context = distributed.from_environment()
    try:
        return _run(config, output_dir, context, resume, evaluate, baseline, show_progress, on_step)
    finally:
        if context is not None:
            distributed.shutdown()


def _run(config, output_dir, context, resume, evaluate, baseline, show_progress, on_step) -> TrainingRun:
    main = context is None or context.is_main
    checkpoint = checkpoint_to_resume(output_dir, resume)
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
    examples = [builder.build(r) for r in splits.train]
    if config.evaluation.classifier == "nearest":  # before training: its index needs every row's label known
        check_labels([e.completion for e in examples], load_labels(config.evaluation.labels))
    max_length = config.trainer.max_seq_length
    train = [tokenize_example(e, tokenizer, max_length) for e in examples]
    validation = [tokenize_example(builder.build(r), tokenizer, max_length) for r in splits.validation]

    # FSDP moves the base to the device one shard at a time: loaded whole, it might not fit there.
    load_at = Placement("cpu", placement.dtype) if fsdp else placement
    base = load_base_for_training(resolved, config.trainer, load_at)
    model = seeded_lora(base, config, context, fast_dropout=placement.device == "cpu")
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(dump_config(config))
        resumed_step = read_state(checkpoint).step if checkpoint else None
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
    result = trainer.train(metrics, checkpoint, on_step=on_step, show_progress=show_progress and main)
    weights = trainer.adapter_weights()  # gathered on every rank under FSDP (collective)
    if context is not None:
        distributed.leave()  # the ranks' last collective: rank 0 writes and evaluates alone
    if not main:
        return TrainingRun(summary=None, eval_report=None, model=model)

    adapter_dir = output_dir / "adapter"
    model.save_pretrained(adapter_dir, safe_serialization=True, state_dict=weights)
    tokenizer.save_pretrained(adapter_dir)
    (adapter_dir / INDEX_FILE).unlink(missing_ok=True)  # an earlier run's index belongs to other weights
    plot_losses(metrics.read(), output_dir / "loss.png")
    summary = RunSummary(
        base_model=config.base_model,
        train_examples=len(train),
        validation_examples=len(validation),
        device=placement.device,
        processes=context.world_size if context else 1,
        dtype=str(placement.dtype).removeprefix("torch."),
        training=result,
    )
    (output_dir / "summary.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n")

    rows = evaluation_rows(config, splits) if evaluate else []
    nearest = config.evaluation.classifier == "nearest"
    report, indexes = None, {}
    if rows or nearest:
        if config.evaluation.backend == "hf":  # the trained model as it is in memory (never `nearest`)
            generator = GenerationModel(model, tokenizer, placement.device)
        else:
            generator = open_backend(config, {ADAPTER: adapter_dir}, placement.device, baseline=baseline)
    if nearest:  # the label index is part of the classifier: serving answers with it too
        indexes[ADAPTER] = build_label_index(config, generator, ADAPTER, splits.train)
        indexes[ADAPTER].save(adapter_dir)
    if rows:
        report = evaluate_config(
            config, generator, rows, baseline=baseline, show_progress=show_progress, indexes=indexes
        )
        write_report(report, output_dir / "eval.json")
    (output_dir / "README.md").write_text(write_model_card(config, summary, report))
    return TrainingRun(summary=summary, eval_report=report, model=model)
