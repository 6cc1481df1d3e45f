"""What a kill can leave behind: a half-written checkpoint and a torn metrics line; `--resume` copes."""

import json

from loraforge.train.checkpoint import STATE_FILE, latest_checkpoint, prune_checkpoints
from loraforge.train.metrics_log import MetricsLog


def checkpoint(root, name: str, finished: bool = True):
    path = root / name
    path.mkdir(parents=True)
    if finished:
        (path / STATE_FILE).write_text("{}")
    return path


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    # save_checkpoint writes step-N.tmp (state file last) and renames it; a kill before the rename leaves it.
    checkpoint(tmp_path, "step-4")
    checkpoint(tmp_path, "step-8.tmp")
    checkpoint(tmp_path, "step-12", finished=False)
    assert latest_checkpoint(tmp_path).name == "step-4"
    prune_checkpoints(tmp_path, keep=1)
    assert (tmp_path / "step-8.tmp").exists() and (tmp_path / "step-12").exists()
    assert not (tmp_path / "step-4").exists()


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "train_loss": 1.0 / s} for s in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "train_lo')
    log = MetricsLog(path, truncate_after_step=2)
    assert log.read() == rows[:2]
    log.write(step=3, train_loss=0.5)
    assert [r["step"] for r in log.read()] == [1, 2, 3]
    assert not path.with_name("metrics.jsonl.tmp").exists()
