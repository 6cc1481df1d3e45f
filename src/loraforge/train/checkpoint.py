"""Training checkpoints: adapter weights (safetensors), optimizer/scheduler state and RNG, for `--resume`."""

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from loraforge.errors import ConfigError

STATE_FILE = "trainer_state.json"
# How optimizer.pt keys its state: "ids" (torch's Optimizer.state_dict, one process or DDP) or "names"
# (torch.distributed.checkpoint's full state dict, keyed by parameter name: FSDP, see train/fsdp.py).
OPTIMIZER_LAYOUT = "ids"


@dataclass
class TrainerState:
    """Where the loop is: enough to continue with the same data order."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    tokens_seen: int = 0
    best_eval_loss: float | None = None
    evals_without_improvement: int = 0


@dataclass(frozen=True)
class FullStates:
    """What a checkpoint holds when the model is sharded: gathered by the trainer before rank 0 writes."""

    trainable: dict[str, torch.Tensor]
    optimizer: dict
    layout: str


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.contiguous().cpu() for name, value in tensors.items()}


def save_checkpoint(
    directory: Path,
    model,
    optimizer,
    scheduler,
    state: TrainerState,
    best: dict[str, torch.Tensor] | None,
    extra: dict[str, object] | None = None,
    full: FullStates | None = None,
) -> None:
    """Everything `--resume` needs, including the best adapter so far (early stopping hands that one back).
    `extra`: more files (name -> tensors, plain values), torch.save'd inside the same atomic rename.
    `full`: the gathered weights and optimizer state of a sharded model, instead of `model`'s and
    `optimizer`'s own."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = full.trainable if full is not None else trainable_state(model)
    save_file(_contiguous(trainable), tmp / "trainable.safetensors")
    if best is not None:
        save_file(_contiguous(best), tmp / "best.safetensors")
    # Optimizer, scheduler and torch RNG (dropout) states hold only tensors and plain values,
    # so they reload with weights_only=True (no arbitrary pickle).
    torch.save(
        {
            "optimizer": full.optimizer if full is not None else optimizer.state_dict(),
            "optimizer_layout": full.layout if full is not None else OPTIMIZER_LAYOUT,
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        tmp / "optimizer.pt",
    )
    for name, value in (extra or {}).items():
        torch.save(value, tmp / name)
    (tmp / STATE_FILE).write_text(json.dumps(asdict(state)))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def _step_of(path: Path) -> int | None:
    """N for a finished checkpoint `step-N`; None for anything else (a `step-N.tmp` that a kill left
    half-written is not a checkpoint)."""
    suffix = path.name.removeprefix("step-")
    return int(suffix) if path.name.startswith("step-") and suffix.isdigit() else None


def _checkpoints(checkpoints: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    found = [p for p in checkpoints.glob("step-*") if _step_of(p) is not None] if checkpoints.exists() else []
    return sorted(found, key=_step_of)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    found = [p for p in _checkpoints(checkpoints) if (p / STATE_FILE).exists()]
    return found[-1] if found else None


def read_state(directory: Path) -> TrainerState:
    return TrainerState(**json.loads((directory / STATE_FILE).read_text()))


def load_best(directory: Path) -> dict[str, torch.Tensor] | None:
    path = directory / "best.safetensors"
    return load_file(path) if path.exists() else None


def read_optimizer_file(directory: Path, layout: str) -> dict:
    """optimizer.pt, checked to be keyed as this trainer keys it (a run resumes with its own strategy)."""
    saved = torch.load(directory / "optimizer.pt", weights_only=True)
    found = saved.get("optimizer_layout", OPTIMIZER_LAYOUT)
    if found != layout:
        strategy = "fsdp" if found == "names" else "ddp or one process"
        raise ConfigError(f"--resume: {directory} was written by trainer.strategy {strategy}; resume with it")
    return saved


def load_checkpoint(directory: Path, model, optimizer, scheduler) -> TrainerState:
    load_trainable_state(model, load_file(directory / "trainable.safetensors"))
    saved = read_optimizer_file(directory, OPTIMIZER_LAYOUT)
    optimizer.load_state_dict(saved["optimizer"])
    restore_schedule_and_rng(saved, scheduler)
    return read_state(directory)


def restore_schedule_and_rng(saved: dict, scheduler) -> None:
    """The scheduler and the RNG states of an optimizer.pt (read_optimizer_file)."""
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"]:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])


def prune_checkpoints(checkpoints: Path, keep: int = 2) -> None:
    for old in _checkpoints(checkpoints)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
