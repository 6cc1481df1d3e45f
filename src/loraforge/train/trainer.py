"""The LoRA training loop: length-grouped batches, completion-only loss, eval, early stopping, checkpoints."""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from loraforge.config.schema import TrainerConfig
from loraforge.data.batching import collate, length_grouped_batches
from loraforge.data.tokenize import TokenizedExample
from loraforge.train.checkpoint import (
    TrainerState,
    load_best,
    load_checkpoint,
    load_trainable_state,
    prune_checkpoints,
    save_checkpoint,
    trainable_state,
)
from loraforge.train.loss import LabelPrototypes, completion_loss
from loraforge.train.metrics_log import MetricsLog
from loraforge.train.progress import TrainingProgress


@dataclass(frozen=True)
class TrainResult:
    """What the training loop did: steps, tokens, time, losses (`RunSummary` adds the run's facts)."""

    steps: int
    tokens_seen: int  # over the whole run, resumed parts included
    session_tokens: int  # in this process, the ones `train_seconds` timed
    train_seconds: float
    final_train_loss: float | None
    best_eval_loss: float | None
    stopped_early: bool

    @property
    def tokens_per_second(self) -> float:
        return self.session_tokens / self.train_seconds if self.train_seconds else 0.0


class LoraTrainer:
    """Trains the LoRA weights of a PEFT model on tokenized examples."""

    def __init__(
        self,
        model,
        train: list[TokenizedExample],
        validation: list[TokenizedExample],
        config: TrainerConfig,
        output_dir: Path,
        pad_id: int,
        device: str = "cpu",
    ) -> None:
        self.model = model
        self.train_examples = train
        self.validation = validation
        self.config = config
        self.output_dir = output_dir
        self.pad_id = pad_id
        self.device = device
        self.lengths = [len(example) for example in train]
        self.batches_per_epoch = math.ceil(len(train) / config.batch_size)
        self.total_steps = config.max_steps or max(
            1, math.ceil(config.epochs * self.batches_per_epoch / config.gradient_accumulation)
        )
        self.prototypes = LabelPrototypes(config.prototype_loss) if config.prototype_loss else None
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.checkpoints = output_dir / "checkpoints"

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.config.learning_rate, weight_decay=self.config.weight_decay)

    def _make_scheduler(self):
        from transformers import get_scheduler

        name = "constant_with_warmup" if self.config.scheduler == "constant" else self.config.scheduler
        warmup = math.ceil(self.config.warmup_ratio * self.total_steps)
        return get_scheduler(
            name, self.optimizer, num_warmup_steps=warmup, num_training_steps=self.total_steps
        )

    def _micro_batches(self, state: TrainerState) -> Iterator[list[int]]:
        """The endless stream of batches from `state`'s position; advances `state` as it goes."""
        while True:
            order = length_grouped_batches(
                self.lengths, self.config.batch_size, self.config.seed, state.epoch
            )
            while state.batch_in_epoch < len(order):
                batch = order[state.batch_in_epoch]
                state.batch_in_epoch += 1
                yield batch
            state.epoch += 1
            state.batch_in_epoch = 0

    def _to_device(self, indices: list[int], examples: list[TokenizedExample]) -> dict[str, torch.Tensor]:
        batch = collate([examples[i] for i in indices], self.pad_id)
        return {key: value.to(self.device) for key, value in batch.items()}

    @torch.no_grad()
    def evaluate_loss(self) -> float | None:
        """Token-weighted mean completion loss on the validation examples (dropout off)."""
        if not self.validation:
            return None
        self.model.eval()
        order = self._share(sorted(range(len(self.validation)), key=lambda i: len(self.validation[i])))
        total, count = 0.0, 0
        for start in range(0, len(order), self.config.batch_size):
            batch = self._to_device(order[start : start + self.config.batch_size], self.validation)
            loss, n = completion_loss(self.model.get_base_model(), **batch)
            total, count = total + float(loss) * n, count + n
        total, count = self._sum_over_ranks(total, count)
        self.model.train()
        return total / max(count, 1)

    def train(
        self,
        metrics: MetricsLog,
        checkpoint: Path | None = None,
        on_step: Callable[[TrainerState], None] | None = None,
        show_progress: bool = True,
    ) -> TrainResult:
        """Train to `total_steps` (or early stopping), from `checkpoint` when given (`run_training` decides
        whether a run resumes) with the best adapter loaded into the model at the end."""
        state, best = self._start(checkpoint)
        tokens_before = state.tokens_seen
        causal_lm = self.model.get_base_model()
        stream = self._micro_batches(state)
        self.model.train()
        train_seconds, last_loss = 0.0, None
        window_loss, window_steps, window_tokens, window_seconds = 0.0, 0, 0, 0.0
        stopped_early = False
        progress = TrainingProgress(self.total_steps, state.step, enabled=show_progress)
        with progress:
            while state.step < self.total_steps:
                started = time.perf_counter()
                step_loss, step_tokens = self._forward_backward(causal_lm, stream)
                torch.nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.requires_grad], self.config.max_grad_norm
                )
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                elapsed = time.perf_counter() - started
                state.step += 1
                state.tokens_seen += step_tokens
                train_seconds += elapsed
                window_loss, window_steps = window_loss + step_loss, window_steps + 1
                window_tokens, window_seconds = window_tokens + step_tokens, window_seconds + elapsed
                last_loss = step_loss
                progress.update(state.step, step_loss, step_tokens / elapsed if elapsed else 0.0)
                if state.step % self.config.log_every == 0 or state.step == self.total_steps:
                    metrics.write(
                        step=state.step,
                        epoch=round(state.epoch + state.batch_in_epoch / self.batches_per_epoch, 4),
                        train_loss=window_loss / window_steps,
                        learning_rate=self.scheduler.get_last_lr()[0],
                        tokens_per_second=round(window_tokens / max(window_seconds, 1e-9), 1),
                    )
                    window_loss, window_steps, window_tokens, window_seconds = 0.0, 0, 0, 0.0
                if self._due(self.config.eval_every, state.step):
                    eval_loss = self.evaluate_loss()
                    if eval_loss is not None:
                        metrics.write(step=state.step, eval_loss=eval_loss)
                        progress.note(f"step {state.step}: validation loss {eval_loss:.4f}")
                        if state.best_eval_loss is None or eval_loss < state.best_eval_loss:
                            state.best_eval_loss, state.evals_without_improvement = eval_loss, 0
                            best = self._snapshot()
                        else:
                            state.evals_without_improvement += 1
                        patience = self.config.early_stopping_patience
                        if patience and state.evals_without_improvement >= patience:
                            stopped_early = True
                if self._due(self.config.checkpoint_every, state.step):
                    self._save_checkpoint(state, best)
                if on_step is not None:
                    on_step(state)
                if stopped_early:
                    progress.note(
                        f"early stopping at step {state.step}: no improvement in {patience} evaluations"
                    )
                    break
        if best is not None:
            self._restore(best)  # hand back the best adapter, not the last one
        return TrainResult(
            steps=state.step,
            tokens_seen=state.tokens_seen,
            session_tokens=state.tokens_seen - tokens_before,
            train_seconds=train_seconds,
            final_train_loss=last_loss,
            best_eval_loss=state.best_eval_loss,
            stopped_early=stopped_early,
        )

    # What a data-parallel trainer (train/distributed.py, train/fsdp.py) does differently.
    def _snapshot(self) -> dict[str, torch.Tensor]:
        """The trainable weights now (the best adapter so far, for early stopping)."""
        return trainable_state(self.model)

    def _restore(self, weights: dict[str, torch.Tensor]) -> None:
        load_trainable_state(self.model, weights)

    def adapter_weights(self) -> dict[str, torch.Tensor] | None:
        """The weights to save as the adapter when the model's own state is not whole (FSDP); None: the
        model's own."""
        return None

    def _share(self, indices: list[int]) -> list[int]:
        """This process's part of the validation examples: all of them."""
        return indices

    def _sum_over_ranks(self, total: float, count: int) -> tuple[float, int]:
        return total, count

    def _start(self, checkpoint: Path | None) -> tuple[TrainerState, dict[str, torch.Tensor] | None]:
        """The state to start from: `checkpoint`'s (RNG included), else a fresh one."""
        if checkpoint is None:
            return TrainerState(), None
        return self._load_checkpoint(checkpoint), load_best(checkpoint)

    def _load_checkpoint(self, checkpoint: Path) -> TrainerState:
        """Weights, optimizer, scheduler and RNG from `checkpoint`; returns where the loop was."""
        return load_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler)

    def _forward_backward(self, causal_lm, stream: Iterator[list[int]]) -> tuple[float, int]:
        """One optimizer step's micro-batches, gradients accumulated: (mean loss, tokens)."""
        step_loss, step_tokens = 0.0, 0
        for _ in range(self.config.gradient_accumulation):
            batch = self._to_device(next(stream), self.train_examples)
            loss, _ = completion_loss(causal_lm, **batch, prototypes=self.prototypes)
            (loss / self.config.gradient_accumulation).backward()
            step_loss += float(loss.detach()) / self.config.gradient_accumulation
            step_tokens += int(batch["attention_mask"].sum())
        return step_loss, step_tokens

    def _save_checkpoint(self, state: TrainerState, best: dict[str, torch.Tensor] | None) -> None:
        directory = self.checkpoints / f"step-{state.step}"
        save_checkpoint(directory, self.model, self.optimizer, self.scheduler, state, best)
        prune_checkpoints(self.checkpoints)

    def _due(self, every: int | None, step: int) -> bool:
        return bool(every) and (step % every == 0 or step == self.total_steps)
