"""`loraforge dataset build/list/show/export` end to end through the CLI entry point."""

import json
import sys

import pytest

from loraforge.cli.main import main
from tests.store.calls import chat_call


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["loraforge", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_build_list_show_export(store, store_url, monkeypatch, capsys, tmp_path):
    store.insert_calls([chat_call("support", f"ticket {i}", f"reply {i}", seq=i) for i in range(20)])
    build = ["dataset", "build", "--task", "support", "--name", "sup", "--dedupe", "--test-fraction", "0.25"]
    code, out, _ = run_cli(monkeypatch, capsys, *build, "--store", store_url)
    assert code == 0 and "built sup v1" in out
    code, out, _ = run_cli(monkeypatch, capsys, *build, "--store", store_url)
    assert code == 0 and "unchanged, reusing sup v1" in out

    code, out, _ = run_cli(monkeypatch, capsys, "dataset", "list", "--store", store_url)
    assert code == 0 and "sup" in out and "support" in out
    code, out, _ = run_cli(monkeypatch, capsys, "dataset", "show", "sup", "--store", store_url)
    manifest = json.loads(out)
    assert manifest["version"] == 1 and manifest["counts"]["rows"] == 20
    assert manifest["filter"] == {
        "task": "support",
        "since": None,
        "min_score": None,
        "use_corrections": False,
        "dedupe": True,
        "test_fraction": 0.25,
        "reviewed_only": False,
    }
    code, out, _ = run_cli(
        monkeypatch, capsys, "dataset", "export", "sup", "--out", str(tmp_path / "x"), "--store", store_url
    )
    assert code == 0
    rows = (tmp_path / "x" / "train.jsonl").read_text().splitlines()
    assert len(rows) == manifest["counts"]["train"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["dataset", "build", "--task", "nothing", "--name", "n"], "no usable successful calls"),
        (["dataset", "show", "missing"], "no dataset 'missing'"),
        (["dataset", "build", "--task", "t", "--name", "n", "--since", "yesterday"], "--since"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(store_url, monkeypatch, capsys, args, message):
    code, _, err = run_cli(monkeypatch, capsys, *args, "--store", store_url)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
