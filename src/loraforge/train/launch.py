"""`loraforge train --nproc N`: start N training processes on this machine with torchrun's launcher.

The launcher is torch.distributed.run itself (elastic agent, c10d rendezvous on localhost), run in this
process; each worker runs `python -m loraforge.train ...`, which is also what a plain
`torchrun --nproc-per-node N -m loraforge.train CONFIG ...` runs, e.g. across machines.
"""

import os

import torch

from loraforge.errors import ConfigError, LoraforgeError

MAX_CPU_PROCESSES_PER_CORE = 1  # CPU ranks beyond one per core only contend for the same cores


class TrainingFailed(LoraforgeError):
    """A worker process failed; its own message is above in the log."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_nproc(nproc: int, device: str, batch_size: int) -> None:
    """A process count this machine and config can run, or a ConfigError saying why not."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if device == "cuda":
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ConfigError(f"--nproc {nproc}: this machine has {gpus} CUDA GPU(s), one process per GPU")
    else:
        cores = os.cpu_count() or 1
        if nproc > cores * MAX_CPU_PROCESSES_PER_CORE:
            raise ConfigError(f"--nproc {nproc}: this machine has {cores} CPU core(s), one process per core")
    if nproc > batch_size:
        raise ConfigError(
            f"--nproc {nproc} is more than trainer.batch_size ({batch_size}): "
            "each micro-batch is split across the processes"
        )


def worker_args(config_path, overrides, output_dir, resume, evaluate, baseline) -> list[str]:
    """The `loraforge train` arguments each worker gets (everything but --nproc)."""
    args = [str(config_path), "--output-dir", str(output_dir)]
    for override in overrides:
        args += ["--set", override]
    if resume:
        args.append("--resume")
    args.append("--evaluate" if evaluate else "--no-evaluate")
    if baseline:
        args.append("--baseline")
    return args


def launch(nproc: int, args: list[str]) -> None:
    """Run `python -m loraforge.train ARGS` in `nproc` processes; raise TrainingFailed if one fails."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun would set 1 thread per process; the cores are better split between the processes.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    launcher_args = parse_args(
        ["--standalone", "--nnodes=1", f"--nproc-per-node={nproc}", "--module", "loraforge.train", *args]
    )
    try:
        run(launcher_args)
    except ChildFailedError as exc:
        rank, failure = min(exc.failures.items())
        raise TrainingFailed(
            f"training process of rank {rank} failed (exit code {failure.exitcode}); its error is above",
            failure.exitcode if failure.exitcode > 0 else 1,
        ) from None
