"""Policy files are validated like training configs: one clear line per mistake, exit 2 from the CLI."""

import pytest
import yaml

from loraforge.errors import ConfigError
from loraforge.flywheel.policy import load_policy
from tests.cli.test_errors import run_cli

BASE = {
    "task": "t",
    "train": {"config": "train.yaml"},
    "serving": {"general_url": "http://127.0.0.1:1/v1", "specialist_url": "http://127.0.0.1:2/v1"},
}


def write(tmp_path, **changes):
    (tmp_path / "train.yaml").write_text("base_model: x\ndata: {train: x.jsonl}\n")
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}))
    return path


def test_defaults_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    policy = load_policy(write(tmp_path))
    assert policy.train.config == tmp_path / "train.yaml"  # from the policy's folder
    assert [s.stage for s in policy.rollout] == ["shadow", "canary", "full"]
    assert policy.adapter_name(3) == "t-v3" and policy.dataset_name == "t-flywheel"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gate": "accuracy >= baseline and import_os"}, "unknown metric 'import_os'"),
        ({"rollout": [{"stage": "shadow"}]}, "rollout must end with a full step"),
        ({"rollout": [{"stage": "canary"}, {"stage": "full"}]}, "percent is required for a canary"),
        ({"trigger": {"min_new_examples": 0}}, "trigger.min_new_examples"),
        ({"trigger": {"every": "daily"}}, "'daily' is not a span"),
        ({"surprise": 1}, "surprise: unknown key"),
        ({"adapter_prefix": "bad name"}, "adapter names such as 'bad name-v1' would not be valid"),
    ],
)
def test_mistakes_are_named(tmp_path, changes, message):
    with pytest.raises(ConfigError, match="invalid policy") as info:
        load_policy(write(tmp_path, **changes))
    assert message in str(info.value)


def test_cli_reports_a_bad_policy_in_one_line(tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(
        monkeypatch, capsys, "flywheel", "check", str(write(tmp_path, gate="accuracy >>"))
    )
    assert code == 2 and err.count("\n") == 1 and "gate" in err and "Traceback" not in err
    code, out, err = run_cli(monkeypatch, capsys, "flywheel", "run-once", str(tmp_path / "missing.yaml"))
    assert code == 2 and "policy file not found" in err
