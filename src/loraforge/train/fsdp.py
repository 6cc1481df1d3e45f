"""`trainer.strategy: fsdp`: the frozen base sharded over the ranks with FSDP2 (`fully_shard`), LoRA trained.

Each decoder layer (the model's `_no_split_modules` classes, what accelerate's FSDP wraps too) is one FSDP
unit: its base and LoRA weights are all-gathered for its forward and backward and freed after, so a rank
holds 1/world of every weight and a base that does not fit one GPU fits several. The rest (embeddings, final
norm, LM head) is the root unit, around the completion loss. The LoRA gradients are reduce-scattered
(averaged over the ranks, like DDP's all-reduce), so DistributedLoraTrainer's token weighting gives the
one-process gradient here too; the micro-batches, data order and steps are the same.

Checkpoints are full, written by rank 0: the LoRA weights and the optimizer state are gathered (they are
small next to the base), the optimizer state keyed by parameter name (torch.distributed.checkpoint's full
optimizer state dict). A run resumes from them under any number of processes, with `fsdp` again. gloo (CPU)
and NCCL (CUDA) both run it; tests/train/test_fsdp.py checks 2 gloo processes against one process.
"""

import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from loraforge.errors import ConfigError
from loraforge.train.checkpoint import (
    FullStates,
    TrainerState,
    read_optimizer_file,
    read_state,
    restore_schedule_and_rng,
)
from loraforge.train.distributed import CompletionLoss, DistributedLoraTrainer, shard
from loraforge.train.loss import LabelPrototypes

LAYOUT = "names"  # optimizer.pt keyed by parameter name (checkpoint.OPTIMIZER_LAYOUT is "ids")


def layer_classes(causal_lm) -> set[str]:
    """Class names of the decoder layers, the FSDP units (transformers lists them as `_no_split_modules`)."""
    names = set(getattr(causal_lm, "_no_split_modules", None) or [])
    if not names:
        raise ConfigError(f"trainer.strategy fsdp: {type(causal_lm).__name__} names no layer to shard")
    return names


def shard_model(
    causal_lm, device: str, world_size: int, prototypes: LabelPrototypes | None = None
) -> torch.nn.Module:
    """The completion loss around `causal_lm`, sharded: one FSDP unit per decoder layer, the rest the root.
    The weights move to `device` unit by unit (a base loaded on CPU never sits whole on one GPU)."""
    mesh = init_device_mesh(torch.device(device).type, (world_size,))
    classes = layer_classes(causal_lm)
    for module in causal_lm.modules():
        if type(module).__name__ in classes:
            fully_shard(module, mesh=mesh)
    return fully_shard(CompletionLoss(causal_lm, prototypes), mesh=mesh)


class FsdpLoraTrainer(DistributedLoraTrainer):
    """DistributedLoraTrainer over a sharded base: same batches and losses, FSDP instead of DDP."""

    def _parallelize(self) -> torch.nn.Module:
        loss = shard_model(self.model.get_base_model(), self.device, self.context.world_size, self.prototypes)
        # fully_shard replaced the parameters with sharded ones (DTensors): the optimizer must hold those.
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        return loss

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def _sync(self, last: bool):
        """Reduce-scatter the gradients only on an optimizer step's last micro-batch."""
        import contextlib

        self.parallel.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        """The full LoRA weights (gathered on every rank: collective)."""
        return {
            name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().clone()
            for name, p in self._trainable().items()
        }

    def _restore(self, weights: dict[str, torch.Tensor]) -> None:
        """Full LoRA weights (every rank has them) back into this rank's shards."""
        with torch.no_grad():
            for name, p in self._trainable().items():
                full = weights[name].to(device=p.device, dtype=p.dtype)
                if isinstance(p, DTensor):
                    full = distribute_tensor(full, p.device_mesh, p.placements)
                p.copy_(full)

    def adapter_weights(self) -> dict[str, torch.Tensor]:
        """What rank 0 saves as the adapter: the PEFT model's state with the LoRA weights gathered."""
        return self._snapshot()

    def _full_states(self) -> FullStates:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole on rank 0 only
        optimizer = get_optimizer_state_dict(self.model, self.optimizer, options=options)
        return FullStates(trainable=self._snapshot(), optimizer=optimizer, layout=LAYOUT)

    def _load_checkpoint(self, checkpoint) -> TrainerState:
        """Every rank reads the full checkpoint and keeps its shards."""
        saved = read_optimizer_file(checkpoint, LAYOUT)
        self._restore(load_file(checkpoint / "trainable.safetensors"))
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(self.model, self.optimizer, saved["optimizer"], options=options)
        restore_schedule_and_rng(saved, self.scheduler)
        return read_state(checkpoint)

    @torch.no_grad()
    def evaluate_loss(self) -> float | None:
        """As LoraTrainer's, with every rank in every forward pass (each one all-gathers the weights): each
        validation batch is split across the ranks like a training micro-batch."""
        if not self.validation:
            return None
        self.model.eval()
        order = sorted(range(len(self.validation)), key=lambda i: len(self.validation[i]))
        total, count = 0.0, 0
        for start in range(0, len(order), self.config.batch_size):
            indices, real = shard(order[start : start + self.config.batch_size], self.context)
            loss, n = self.parallel(**self._to_device(indices, self.validation))
            if real:
                total, count = total + float(loss) * n, count + n
        total, count = self._sum_over_ranks(total, count)
        self.model.train()
        return total / max(count, 1)
