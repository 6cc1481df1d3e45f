"""Data-parallel training: 2 gloo processes on CPU train the same adapter as one process."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from loraforge.config.loading import dump_config
from loraforge.train.distributed import RNG_FILE
from loraforge.train.run import run_training
from tests.cli.test_errors import run_cli
from tests.train.conftest import toy_config, write_toy_data
from tests.train.test_training import losses

# Same global batches, dropout off: the two runs differ only in float summation order (a rank's forward
# runs on half a micro-batch, padded to its own length), measured ~1e-7 relative on this model.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
# 3 steps per epoch of 48 training rows at 8 x 2 per step; eval and checkpoint at steps 3 and 6.
TRAINER = {"max_steps": 6, "gradient_accumulation": 2, "eval_every": 3, "checkpoint_every": 3}


def train_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    """`loraforge train ...` in a fresh process (the workers it spawns must be real processes too)."""
    code = "from loraforge.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "train", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """The same config trained in one process (in this one) and in two (`--nproc 2`)."""
    root = tmp_path_factory.mktemp("ddp")
    config = toy_config(tiny_model_dir, write_toy_data(root / "toy.jsonl"), dropout=0.0, **TRAINER)
    (root / "config.yaml").write_text(dump_config(config))
    run_training(config, root / "one", evaluate=False, show_progress=False)
    done = train_cli("config.yaml", "--nproc", "2", "-o", "two", "--no-evaluate", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.mark.slow
def test_two_processes_match_one(runs):
    one, two = rows(runs / "one"), rows(runs / "two")
    # One writer: an appending second rank would have doubled every row.
    assert [(r["step"], "eval_loss" in r) for r in two] == [(r["step"], "eval_loss" in r) for r in one]
    assert len(one) == 8
    for a, b in zip(one, two, strict=True):
        key = "eval_loss" if "eval_loss" in a else "train_loss"
        assert b[key] == pytest.approx(a[key], rel=LOSS_RTOL), a["step"]
    expected = load_file(runs / "one" / "adapter" / "adapter_model.safetensors")
    got = load_file(runs / "two" / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=WEIGHT_ATOL)
    summary = json.loads((runs / "two" / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["tokens_seen"] == json.loads((runs / "one" / "summary.json").read_text())["tokens_seen"]
    checkpoints = sorted(p.name for p in (runs / "two" / "checkpoints").iterdir())
    assert checkpoints == ["step-3", "step-6"]
    assert len(torch.load(runs / "two" / "checkpoints" / "step-3" / RNG_FILE, weights_only=True)) == 2


@pytest.mark.slow
def test_two_process_resume_continues_the_run(runs):
    """Cut the 2-process run back to its step-3 checkpoint (as a crash after it would), resume it in 2
    processes: steps 4-6 and the adapter come out as in the uninterrupted run."""
    cut = runs / "cut"
    shutil.copytree(runs / "two", cut)
    shutil.rmtree(cut / "checkpoints" / "step-6")
    shutil.rmtree(cut / "adapter")
    done = train_cli("config.yaml", "--nproc", "2", "-o", "cut", "--resume", "--no-evaluate", cwd=runs)
    assert done.returncode == 0, done.stderr[-3000:]
    assert losses(cut) == losses(runs / "two")  # truncated after step 3, steps 4-6 logged once, same values
    expected = load_file(runs / "two" / "adapter" / "adapter_model.safetensors")
    got = load_file(cut / "adapter" / "adapter_model.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=WEIGHT_ATOL)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--nproc", "0"], "--nproc must be at least 1"),
        (["--nproc", "100000"], "CPU core(s), one process per core"),
        (["--nproc", "2", "--set", "trainer.batch_size=1"], "more than trainer.batch_size (1)"),
        (["--nproc", "2", "--set", "trainer.strategy=zero3"], "trainer.strategy"),
        (["--nproc", "2", "--resume", "-o", "nowhere"], "--resume: no checkpoint found"),
    ],
)
def test_bad_nproc_exits_2_with_one_line(monkeypatch, capsys, tmp_path, tiny_model_dir, args, needle):
    config = tmp_path / "config.yaml"
    config.write_text(dump_config(toy_config(tiny_model_dir, write_toy_data(tmp_path / "toy.jsonl"))))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "train", str(config), *args)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1
