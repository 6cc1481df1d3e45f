"""FSDP (trainer.strategy: fsdp): 2 gloo processes with the base sharded train the adapter of one process."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from loraforge.config.loading import dump_config
from loraforge.train.checkpoint import read_optimizer_file
from loraforge.train.fsdp import LAYOUT
from loraforge.train.run import run_training
from tests.cli.test_errors import run_cli
from tests.train.conftest import toy_config, write_toy_data
from tests.train.test_distributed import LOSS_RTOL, TRAINER, WEIGHT_ATOL, rows, train_cli
from tests.train.test_training import losses

# Same tolerances as DDP: the same global batches, dropout off; the runs differ only in float summation order
# (each rank's forward runs on its half of a micro-batch, the gradients are reduce-scattered instead of
# all-reduced). Measured on the tiny model: 4e-8 relative largest loss gap.


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """The same config trained in one process (in this one) and in two with `strategy: fsdp`."""
    root = tmp_path_factory.mktemp("fsdp")
    config = toy_config(
        tiny_model_dir, write_toy_data(root / "toy.jsonl"), dropout=0.0, strategy="fsdp", **TRAINER
    )
    (root / "config.yaml").write_text(dump_config(config))
    run_training(config, root / "one", evaluate=False, show_progress=False)  # one process: strategy unused
    done = train_cli("config.yaml", "--nproc", "2", "-o", "two", "--no-evaluate", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def max_relative_gap(one: list[dict], two: list[dict]) -> float:
    gaps = []
    for a, b in zip(one, two, strict=True):
        key = "eval_loss" if "eval_loss" in a else "train_loss"
        gaps.append(abs(b[key] - a[key]) / abs(a[key]))
    return max(gaps)


@pytest.mark.slow
def test_two_fsdp_processes_match_one(runs):
    one, two = rows(runs / "one"), rows(runs / "two")
    assert [(r["step"], "eval_loss" in r) for r in two] == [(r["step"], "eval_loss" in r) for r in one]
    assert len(one) == 8
    gap = max_relative_gap(one, two)
    assert gap <= LOSS_RTOL, f"largest relative loss gap {gap:.2e}"
    expected = load_file(runs / "one" / "adapter" / "adapter_model.safetensors")
    got = load_file(runs / "two" / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()  # the whole adapter, gathered from both ranks' shards
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        torch.testing.assert_close(got[name], value, rtol=0, atol=WEIGHT_ATOL)
    config = json.loads((runs / "two" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8
    assert json.loads((runs / "two" / "summary.json").read_text())["processes"] == 2
    step3 = runs / "two" / "checkpoints" / "step-3"
    saved = read_optimizer_file(step3, LAYOUT)  # full optimizer state, keyed by parameter name
    assert set(saved["optimizer"]["state"]) == set(load_file(step3 / "trainable.safetensors"))
    # Every Adam moment is whole (not one rank's half): its shape is the parameter's.
    trainable = load_file(step3 / "trainable.safetensors")
    for name, state in saved["optimizer"]["state"].items():
        assert state["exp_avg"].shape == trainable[name].shape, name


@pytest.mark.slow
def test_fsdp_resume_continues_the_run(runs):
    """Cut the FSDP run back to its step-3 checkpoint and resume it with FSDP: steps 4-6 and the adapter
    come out as in the uninterrupted run (the sharded optimizer state is restored from the full one)."""
    cut = runs / "cut"
    shutil.copytree(runs / "two", cut)
    shutil.rmtree(cut / "checkpoints" / "step-6")
    shutil.rmtree(cut / "adapter")
    done = train_cli("config.yaml", "--nproc", "2", "-o", "cut", "--resume", "--no-evaluate", cwd=runs)
    assert done.returncode == 0, done.stderr[-3000:]
    assert losses(cut) == pytest.approx(losses(runs / "two"), rel=1e-6)
    expected = load_file(runs / "two" / "adapter" / "adapter_model.safetensors")
    got = load_file(cut / "adapter" / "adapter_model.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=WEIGHT_ATOL)


@pytest.mark.slow
def test_a_ddp_run_does_not_resume_an_fsdp_checkpoint(runs):
    cut = runs / "cut-ddp"
    shutil.copytree(runs / "two", cut)
    done = train_cli(
        "config.yaml", "--nproc", "2", "-o", "cut-ddp", "--resume", "--no-evaluate",
        "--set", "trainer.strategy=ddp", cwd=runs,
    )  # fmt: skip
    assert done.returncode != 0
    assert "written by trainer.strategy fsdp; resume with it" in done.stderr


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["trainer.quantization=4bit"], "QLoRA"),
        (["evaluation.backend=hf"], "evaluation.backend 'engine'"),
    ],
)
def test_fsdp_refuses_what_it_cannot_shard(monkeypatch, capsys, tmp_path, tiny_model_dir, overrides, needle):
    config = tmp_path / "config.yaml"
    data = write_toy_data(tmp_path / "toy.jsonl")
    config.write_text(dump_config(toy_config(tiny_model_dir, data, strategy="fsdp")))
    monkeypatch.chdir(tmp_path)
    sets = [arg for o in overrides for arg in ("--set", o)]
    code, _, err = run_cli(monkeypatch, capsys, "train", str(config), "--nproc", "2", *sets)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1


def test_an_fsdp_run_does_not_resume_a_ddp_checkpoint(tmp_path):
    from loraforge.errors import ConfigError

    torch.save({"optimizer": {}, "optimizer_layout": "ids"}, tmp_path / "optimizer.pt")
    with pytest.raises(ConfigError, match="written by trainer.strategy ddp or one process; resume with it"):
        read_optimizer_file(tmp_path, LAYOUT)
    torch.save({"optimizer": {}}, tmp_path / "optimizer.pt")  # written before the layout was recorded
    with pytest.raises(ConfigError, match="ddp or one process"):
        read_optimizer_file(tmp_path, LAYOUT)
