"""A turn killed (SIGKILL) in any step resumes at that step on the next `run-once` and finishes with one
dataset version, one training run and one route change per stage; two watchers never turn a task twice."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from loraforge.curation.datasets import list_datasets
from loraforge.flywheel.records import list_runs
from loraforge.flywheel.turn import run_once
from loraforge.store.routes import route_history
from tests.conftest import REPO_ROOT
from tests.flywheel.conftest import TASK
from tests.gateway.servers import loraforge_cli


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])}


@pytest.mark.slow  # a subprocess per crash point, each importing torch and training a little
@pytest.mark.parametrize("step", ["dataset", "train", "register", "compare", "shadow"])
def test_a_turn_killed_in_a_step_resumes_there(loop, step):
    loop.seed(24)
    policy_file = loop.policy_file()
    crashed = subprocess.run(
        [sys.executable, "-m", "tests.flywheel.crash", str(policy_file), loop.store_url, step],
        env=_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    [run] = list_runs(loop.store)
    assert run.status == "running"

    time.sleep(3.2)  # the killed process's lock lease (lock_lease: 3s) runs out
    report = run_once(loop.store, loop.policy())
    assert report.outcome == "waiting" and report.message.startswith("shadow"), report
    [run] = list_runs(loop.store)
    assert [d.version for d in list_datasets(loop.store)] == [1]
    assert [c.stage for c in route_history(loop.store, TASK)] == ["shadow"]
    run_dirs = list((loop.root / "runs" / TASK).iterdir())
    assert [d.name for d in run_dirs] == ["v1"]
    steps = [
        json.loads(line)["step"] for line in (run_dirs[0] / "metrics.jsonl").open() if '"train_loss"' in line
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # one run: resumed, never restarted from scratch
    if step == "train":
        assert any("resumed" in e["message"] for e in run.events)


@pytest.mark.slow  # two CLI processes importing torch, and one training
def test_two_watchers_turn_a_task_once(loop):
    loop.seed(24)
    policy_file = loop.policy_file()
    command = [*loraforge_cli(), "flywheel", "watch", str(policy_file), "--interval", "1s",
               "--store", loop.store_url]  # fmt: skip
    watchers = [
        subprocess.Popen(
            command, env=_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 240
        while not [c for c in route_history(loop.store, TASK) if c.stage == "shadow"]:
            assert time.monotonic() < deadline, "no turn reached shadow"
            assert all(w.poll() is None for w in watchers), [w.stdout.read() for w in watchers]
            time.sleep(0.5)
        time.sleep(2.5)  # both watchers have had rounds since
    finally:
        for w in watchers:
            w.send_signal(signal.SIGTERM)
        outputs = [w.communicate(timeout=60)[0] for w in watchers]
    assert [w.returncode for w in watchers] == [0, 0], outputs
    assert len(list_runs(loop.store)) == 1 and len(list_datasets(loop.store)) == 1, outputs
    assert sum("training on" in out for out in outputs) == 1, outputs
    assert all("stopping after the current step" in out for out in outputs), outputs
