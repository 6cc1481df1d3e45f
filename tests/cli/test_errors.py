"""User mistakes on the command line: exit status 2 and one line naming the problem, never a traceback."""

import sys

import pytest

from loraforge.cli.main import main


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["loraforge", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_help_lists_the_commands():
    """In a fresh process: a command registered only because a test imported its module would hide here."""
    import subprocess

    from loraforge.cli.main import COMMAND_MODULES

    code = "from loraforge.cli.main import main; main()"
    out = subprocess.run(
        [sys.executable, "-c", code, "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ["init", "train", "evaluate", "tune", "export", "generate", "demo", "store"]:
        assert f" {command} " in out, command
    assert len(COMMAND_MODULES) == len(set(COMMAND_MODULES))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "missing.yaml"], "config file not found: missing.yaml"),
        (["generate", "--model", "no-such-alias", "hi"], "unknown model 'no-such-alias'"),
        (["generate", "--model", "./nowhere/model.gguf", "hi"], "does not exist"),
        (["evaluate", "missing.yaml"], "nothing to evaluate"),
    ],
)
def test_user_errors_exit_2_with_one_line(monkeypatch, capsys, args, needle):
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_invalid_config_value_names_the_key(monkeypatch, capsys, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  train: t.jsonl\ntrainer:\n  batch_size: -3\n")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(config))
    assert code == 2
    assert "trainer.batch_size" in err
    code, _, err = run_cli(monkeypatch, capsys, "train", str(config), "--set", "trainer.batch_size=4")
    assert code == 2
    assert "data file not found: t.jsonl" in err


def test_unknown_option_is_a_usage_error(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "train", "x.yaml", "--no-such-flag")
    assert code == 2
    assert "No such option" in err
