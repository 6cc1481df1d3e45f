"""`loraforge tune`: trials compared by validation loss, bad ones pruned, the study resumable."""

import json
import os

import pytest

from loraforge.cli.tune import parse_duration
from loraforge.config import validate_config
from loraforge.errors import ConfigError
from loraforge.train.trainer import LoraTrainer
from loraforge.tune import run_search
from loraforge.tune.storage import optuna_storage_url

SPACE = {
    "learning_rate": {"low": 1e-4, "high": 3e-3, "log": True},
    "r": [2, 4],
    "epochs": None,
    "dropout": None,
}


@pytest.fixture
def config(make_config):
    raw = make_config(max_steps=6, eval_every=2).model_dump(mode="json")
    raw["tune"] = SPACE
    return validate_config(raw)


def _search(config, tmp_path, trials, **kwargs):
    storage = optuna_storage_url(f"sqlite:///{tmp_path / 'store.db'}")
    return run_search(
        config,
        tmp_path / "out",
        trials=trials,
        storage_url=storage,
        study_name="s",
        show_progress=False,
        **kwargs,
    )


def test_a_search_finds_the_best_trial_and_resumes(config, tmp_path):
    result = _search(config, tmp_path, 3)
    assert result.finished == 3
    rows = json.loads((tmp_path / "out" / "trials.json").read_text())
    # the first two always complete (the pruner needs them to compare with); later ones may be pruned
    assert [r["state"] for r in rows[:2]] == ["complete"] * 2 and rows[2]["state"] in ("complete", "pruned")
    assert result.best_value == min(r["value"] for r in rows if r["state"] == "complete")
    assert set(result.best_params) == {"learning_rate", "r"}
    assert (result.best_run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "tune.png").is_file() and (tmp_path / "store-optuna.db").is_file()
    again = _search(config, tmp_path, 4)  # resumes the stored study: one more trial, not four
    assert again.finished == 4 and len(json.loads((tmp_path / "out" / "trials.json").read_text())) == 4


def test_a_trial_cut_off_by_a_crash_runs_again_with_its_parameters(config, tmp_path):
    import optuna

    storage = optuna_storage_url(f"sqlite:///{tmp_path / 'store.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="minimize")
    study.enqueue_trial({"learning_rate": 2e-3, "r": 4})
    trial = study.ask()  # a trial that was RUNNING when its process died, mid-training
    trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True), trial.suggest_categorical("r", [2, 4])
    _search(config, tmp_path, 1)
    rows = json.loads((tmp_path / "out" / "trials.json").read_text())
    assert [r["state"] for r in rows] == ["fail", "complete"]
    assert rows[1]["params"] == {"learning_rate": 2e-3, "r": 4}


def test_a_trial_trailing_the_others_is_pruned(config, tmp_path, monkeypatch):
    import optuna

    # Scripted validation losses: higher learning rates do better, so the third trial trails both others.
    monkeypatch.setattr(LoraTrainer, "evaluate_loss", lambda self: 1.0 / self.config.learning_rate)
    storage = optuna_storage_url(f"sqlite:///{tmp_path / 'store.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="minimize")
    for lr in (2e-3, 3e-3, 1e-4):
        study.enqueue_trial({"learning_rate": lr, "r": 2})
    _search(config, tmp_path, 3)
    rows = json.loads((tmp_path / "out" / "trials.json").read_text())
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned"]


def test_mistakes_are_named(make_config, tmp_path):
    with pytest.raises(ConfigError, match="eval_every"):
        _search(make_config(max_steps=2), tmp_path, 1)
    raw = make_config().model_dump(mode="json")
    raw["tune"] = {"learning_rate": {"low": 1e-2, "high": 1e-3}}
    with pytest.raises(ConfigError, match="tune.learning_rate: Value error, low must be below high"):
        validate_config(raw)
    assert parse_duration("2h") == 7200 and parse_duration("90") == 90
    with pytest.raises(ConfigError, match="--timeout"):
        parse_duration("soon")


def test_the_study_lives_beside_the_store(tmp_path):
    assert (
        optuna_storage_url(f"sqlite:///{tmp_path}/loraforge.db")
        == f"sqlite:///{tmp_path}/loraforge-optuna.db"
    )


@pytest.mark.skipif(
    not os.environ.get("LORAFORGE_TEST_POSTGRES_URL"), reason="needs LORAFORGE_TEST_POSTGRES_URL"
)
def test_on_postgresql_the_study_has_a_schema_of_its_own():
    import optuna
    from sqlalchemy import create_engine, inspect

    url = optuna_storage_url(os.environ["LORAFORGE_TEST_POSTGRES_URL"])
    optuna.create_study(study_name="pg-schema-check", storage=url, load_if_exists=True)
    engine = create_engine(url.split("?")[0])
    try:
        assert "studies" in inspect(engine).get_table_names(schema="optuna")
        assert "studies" not in inspect(engine).get_table_names(schema="public")
    finally:
        engine.dispose()


def test_the_cli_runs_a_search_and_prints_the_best_trial(config, tmp_path, monkeypatch, capsys):
    import sys

    import yaml

    from loraforge.cli.main import main

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    args = [
        "tune",
        str(path),
        "--trials",
        "1",
        "--store",
        f"sqlite:///{tmp_path / 's.db'}",
        "-o",
        str(tmp_path / "o"),
    ]
    monkeypatch.setattr(sys, "argv", ["loraforge", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    assert "best trial" in capsys.readouterr().out and (tmp_path / "o" / "best.json").is_file()
