"""Data-parallel LoRA training under torchrun: DDP over gloo (CPU) or NCCL (CUDA); FSDP in train/fsdp.py.

Every micro-batch of the single-process run is split across the ranks, so the global batch (and the data
order, the schedule and the number of steps) is the same as with one process. Each rank's loss is weighted by
its share of the micro-batch's completion tokens, which makes the averaged gradient exactly the
single-process one: sum over all tokens / all tokens. Only rank 0 writes files.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from loraforge.errors import ConfigError
from loraforge.train.checkpoint import (
    FullStates,
    TrainerState,
    prune_checkpoints,
    save_checkpoint,
)
from loraforge.train.loss import LabelPrototypes, completion_loss
from loraforge.train.trainer import LoraTrainer

RNG_FILE = "rank_rng.pt"  # per-rank dropout RNG states in a checkpoint, written by rank 0


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job (read from the variables torchrun sets)."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> DistContext | None:
    """The torchrun job this process belongs to, or None for a plain single-process run."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    return DistContext(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ["WORLD_SIZE"]),
    )


def check_strategy(config) -> None:
    """What a strategy cannot run with (a FineTuneConfig), as a ConfigError before any process starts."""
    if config.trainer.strategy != "fsdp":
        return
    if config.trainer.quantization == "4bit":
        raise ConfigError("trainer.strategy 'fsdp' does not shard 4-bit (QLoRA) weights; use 'ddp'")
    if config.evaluation.backend == "hf":
        raise ConfigError(
            "trainer.strategy 'fsdp' keeps the trained model sharded across the processes; "
            "evaluate it with evaluation.backend 'engine' (the saved adapter)"
        )


def init_process_group(context: DistContext, device: str) -> str:
    """Join the job's process group; returns this rank's device (`cuda:LOCAL_RANK` on GPUs)."""
    if device == "cuda":
        torch.cuda.set_device(context.local_rank)
        device = f"cuda:{context.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def leave() -> None:
    """Leave the process group with every rank, once the last collective is done. The barrier is why: a rank
    that tore its gloo links down while a peer still read the tail of the last gather would abort
    ("terminate called without an active exception")."""
    dist.barrier()
    dist.destroy_process_group()


def shutdown() -> None:
    """Leave the process group if still in it (after a failure: no barrier, a peer may be gone)."""
    if dist.is_initialized():
        dist.destroy_process_group()


class CompletionLoss(torch.nn.Module):
    """completion_loss as a module, so DDP and FSDP see the forward pass they hook into."""

    def __init__(self, causal_lm, prototypes: LabelPrototypes | None) -> None:
        super().__init__()
        self.causal_lm = causal_lm
        self.prototypes = prototypes

    def forward(self, input_ids, attention_mask, labels):
        return completion_loss(self.causal_lm, input_ids, attention_mask, labels, self.prototypes)


def shard(indices: list[int], context: DistContext) -> tuple[list[int], bool]:
    """This rank's part of a micro-batch. A rank left without an example (a last batch smaller than the
    world) still runs a pass, on one example weighted zero: every rank must join every gradient sync."""
    mine = indices[context.rank :: context.world_size]
    return (mine, True) if mine else (indices[:1], False)


class DistributedLoraTrainer(LoraTrainer):
    """LoraTrainer whose micro-batches are split across the ranks of a torchrun job."""

    def __init__(self, *args, context: DistContext, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.context = context
        self.parallel = self._parallelize()

    def _parallelize(self) -> torch.nn.Module:
        """The loss module that runs the forward passes, wrapped in DDP."""
        module = CompletionLoss(self.model.get_base_model(), self.prototypes)
        device_ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def _start(self, checkpoint: Path | None) -> tuple[TrainerState, dict[str, torch.Tensor] | None]:
        """Also restores this rank's own RNG: dropout masks differ per rank (`run.seeded_lora`)."""
        state, best = super()._start(checkpoint)
        rng_file = checkpoint / RNG_FILE if checkpoint is not None else None
        if rng_file is not None and rng_file.exists():
            states = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(states[self.context.rank % len(states)])
        return state, best

    def _forward_backward(self, causal_lm, stream: Iterator[list[int]]) -> tuple[float, int]:
        accumulation = self.config.gradient_accumulation
        world = self.context.world_size
        totals = torch.zeros(2, dtype=torch.float64)  # global loss sum, global tokens
        for micro in range(accumulation):
            indices, real = shard(next(stream), self.context)
            batch = self._to_device(indices, self.train_examples)
            last = micro == accumulation - 1
            with self._sync(last):
                loss, count = self.parallel(**batch)
                count = count if real else 0
                counts = torch.tensor([float(count), float(loss.detach()) * count], dtype=torch.float64)
                dist.all_reduce(counts)  # the micro-batch's completion tokens and loss sum over all ranks
                global_count = max(counts[0].item(), 1.0)
                # DDP averages over ranks: scaling by world * count / global_count turns that average into
                # the token-weighted mean of the whole micro-batch, i.e. the single-process gradient.
                (loss * (world * count / global_count) / accumulation).backward()
            totals[0] += counts[1].item() / global_count / accumulation
            totals[1] += int(batch["attention_mask"].sum()) if real else 0
        tokens = torch.tensor([totals[1].item()], dtype=torch.float64)
        dist.all_reduce(tokens)
        return float(totals[0]), int(tokens.item())

    def _sync(self, last: bool):
        """Gradient sync only on an optimizer step's last micro-batch (DDP's no_sync)."""
        import contextlib

        return contextlib.nullcontext() if last else self.parallel.no_sync()

    def _share(self, indices: list[int]) -> list[int]:
        """Each rank scores its share of the validation examples."""
        return indices[self.context.rank :: self.context.world_size]

    def _sum_over_ranks(self, total: float, count: int) -> tuple[float, int]:
        sums = torch.tensor([total, float(count)], dtype=torch.float64)
        dist.all_reduce(sums)
        return sums[0].item(), int(sums[1].item())

    def _save_checkpoint(self, state: TrainerState, best) -> None:
        """Rank 0 writes, with every rank's RNG state (gathered) so a resumed run draws the same dropout."""
        states: list = [None] * self.context.world_size
        dist.all_gather_object(states, torch.get_rng_state())
        full = self._full_states()  # collective: every rank takes part, rank 0 writes
        if self.context.is_main:
            directory = self.checkpoints / f"step-{state.step}"
            extra = {RNG_FILE: states}
            save_checkpoint(directory, self.model, self.optimizer, self.scheduler, state, best, extra, full)
            prune_checkpoints(self.checkpoints)
        dist.barrier()  # no rank runs ahead of a checkpoint a crash might need

    def _full_states(self) -> FullStates | None:
        """The trainable weights and optimizer state when the ranks hold parts of them (FSDP); None when
        rank 0 holds them whole (DDP)."""
        return None


class NoMetrics:
    """The metrics log of ranks other than 0: they compute the same numbers and write none."""

    def write(self, **row) -> None:
        pass
