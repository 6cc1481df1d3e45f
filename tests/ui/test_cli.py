"""`loraforge ui` as users run it: mistakes exit 2 with one line."""

import sys

import pytest

from loraforge.cli.main import main


@pytest.mark.parametrize(
    "args, message",
    [
        (["--host", "0.0.0.0"], "no --api-key is set"),
        (["--serve-url", "localhost:8000"], "must start with http:// or https://"),
        (["--store", "mysql://u@h/db"], "only sqlite"),
    ],
)
def test_ui_user_mistakes_exit_2(monkeypatch, capsys, tmp_path, args, message):
    monkeypatch.setattr(sys, "argv", ["loraforge", "ui", *args])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
