"""Data-parallel training: tokens/s of `loraforge train --nproc N` vs one process, same config, same run.

Both sides train the same config for the same steps from the same start (one process first, then N), and
report real (non-padding) tokens per second of training step time from their summary.json. On a CPU the
ratio is bounded by cores: N gloo processes share the machine's cores (OMP threads split between them), so
a 2-core machine can show no gain or a loss; the point of --nproc is one process per GPU or per node.

    .venv/bin/python benchmarks/train_distributed.py                       # banking77 on SmolLM2, 2 procs
    .venv/bin/python benchmarks/train_distributed.py --config my.yaml --nproc 4 --steps 20
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from loraforge.hardware import describe

ROOT = Path(__file__).resolve().parents[1]
CLI = "from loraforge.cli.main import main; main()"


def train(config: Path, out: Path, steps: int, nproc: int, overrides: list[str]) -> dict:
    args = ["train", str(config), "-o", str(out), "--no-evaluate", "--set", f"trainer.max_steps={steps}"]
    for override in overrides:
        args += ["--set", override]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    subprocess.run([sys.executable, "-c", CLI, *args], check=True, capture_output=True, text=True)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "banking77.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=["data.max_train_examples=600"])
    args = parser.parse_args()
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        one = train(args.config, Path(tmp) / "one", args.steps, 1, args.overrides)
        many = train(args.config, Path(tmp) / "many", args.steps, args.nproc, args.overrides)
    for name, summary in [("1 process", one), (f"{args.nproc} processes", many)]:
        print(
            f"{name:>12}: {summary['tokens_per_second']:>9,.0f} tokens/s  final loss "
            f"{summary['final_train_loss']:.4f}  ({summary['steps']} steps, {summary['tokens_seen']} tokens)"
        )
    ratio = many["tokens_per_second"] / max(one["tokens_per_second"], 1e-9)
    print(f"ratio {args.nproc} / 1 processes: {ratio:.2f}x")


if __name__ == "__main__":
    main()
