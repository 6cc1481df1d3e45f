"""`loraforge init`: the task, lengths and schedule inferred from data, and a config `train` accepts."""

import json
import sys

import pytest

from loraforge.config import load_config
from loraforge.config.tasks import DEFAULT_FALLBACK_MARGIN, DEFAULT_FALLBACK_MIN_SIMILARITY, FallbackRule
from loraforge.recipe.infer import (
    CLASSIFICATION_RANK,
    FEW_PER_LABEL,
    MAX_EPOCHS,
    MIN_EPOCHS,
    PROTOTYPE_LOSS,
    RANK,
    SYSTEM_PROMPTS,
    VALIDATION_FRACTION,
    fallback_label,
    holdout,
    infer_task,
    make_prompt,
    new_tokens,
    schedule,
)

INTENTS = ["card_arrival", "activate_my_card", "transfer_failed", "exchange_rate"]


def test_the_task_follows_the_targets():
    assert infer_task([INTENTS[i % 4] for i in range(40)])[0] == "classification"
    assert infer_task([json.dumps({"name": f"x{i}", "n": i}) for i in range(40)])[0] == "json"
    assert infer_task([f"a different sentence number {i}" for i in range(40)])[0] == "generation"
    # repeating but long targets are text to generate, not labels
    assert infer_task(["a long answer " * 10, "another long answer " * 10] * 20)[0] == "generation"


def test_a_label_meaning_none_of_the_others_is_the_fallback():
    assert fallback_label([*INTENTS, "oos"]) == "oos"
    assert fallback_label(["Out-Of-Scope", *INTENTS]) == "Out-Of-Scope"
    assert fallback_label(INTENTS) is None
    assert fallback_label([*INTENTS, "other", "unknown"]) is None  # two candidates: no guess


def test_small_data_gets_more_epochs_within_bounds():
    epochs = [schedule(rows)[0] for rows in (50, 400, 800, 2000, 10_000, 100_000)]
    assert epochs == sorted(epochs, reverse=True)
    assert epochs[0] == MAX_EPOCHS and epochs[-1] == MIN_EPOCHS


def test_few_examples_a_label_all_train_when_a_test_file_evaluates():
    labels = [f"intent_{i}" for i in range(10)]
    few, some = 10 * FEW_PER_LABEL, 10 * FEW_PER_LABEL + 10
    assert holdout(few, labels, has_test=True)[0] == 0.0
    assert holdout(some, labels, has_test=True)[0] == VALIDATION_FRACTION  # enough to spare a few a label
    assert holdout(few, labels, has_test=False)[0] == VALIDATION_FRACTION  # the evaluation's split
    assert holdout(few, None, has_test=True)[0] == VALIDATION_FRACTION  # free text keeps early stopping
    # the schedule counts the steps of the rows that train: 100 rows are 7 batches, 90 carved ones 6
    assert "~70 steps" in schedule(few, 0.0)[2] and "~60 steps" in schedule(few)[2]


def test_the_prompt_is_the_input_under_a_short_system_prompt():
    chat = make_prompt("classification", "text", chat=True)
    assert chat.template == "{text}" and chat.chat_template
    # a one-line system prompt replaces the model's own default one (SmolLM2's identity line) in every row
    assert chat.system == SYSTEM_PROMPTS["classification"] and len(chat.system.split()) <= 6
    assert {make_prompt(task, "q", chat=True).system for task in SYSTEM_PROMPTS} == set(
        SYSTEM_PROMPTS.values()
    )
    plain = make_prompt("generation", "question", chat=False)
    assert plain.template == "{question}\n" and not plain.chat_template and plain.system is None


def test_new_tokens_fit_the_longest_target_with_room_only_for_free_text():
    assert new_tokens("classification", 17) == 19  # a constrained label never runs longer than itself
    assert new_tokens("generation", 79) == 79 + 19 + 8  # ViGGO's longest MR: 1.25x + 8, not 2x
    assert new_tokens("json", 8) == 18
    assert new_tokens("generation", 10_000) == 4096  # the schema's ceiling


def _cli(monkeypatch, capsys, *args):
    from loraforge.cli.main import main

    monkeypatch.setattr(sys, "argv", ["loraforge", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_init_writes_a_config_train_accepts(monkeypatch, capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"text": f"msg {i}", "label": INTENTS[i % 4]}) + "\n" for i in range(40))
    )
    out = tmp_path / "cfg" / "task.yaml"
    base = ["init", "--data", str(data), "--input", "text", "--target", "label", "--out", str(out)]
    code, printed, _ = _cli(monkeypatch, capsys, *base, "--base-model", str(tiny_model_dir))
    assert code == 0
    assert "task classification: 4 distinct targets in 40 rows" in printed
    config = load_config(out)
    assert config.evaluation.task == "classification" and config.evaluation.constrain_to_labels
    assert config.evaluation.classifier == "nearest" and "classifier nearest" in printed
    assert config.trainer.prototype_loss == PROTOTYPE_LOSS > 0 and "prototype_loss" in printed
    assert config.adapter.r == CLASSIFICATION_RANK != RANK and config.adapter.alpha == 2 * CLASSIFICATION_RANK
    assert f"adapter: rank {CLASSIFICATION_RANK}" in printed
    assert config.prompt.system == SYSTEM_PROMPTS["classification"] and config.prompt.chat_template
    assert "system prompt 'Answer with the label.'" in printed
    assert json.loads(config.evaluation.labels.read_text()) == sorted(INTENTS)
    assert config.trainer.epochs == MAX_EPOCHS and config.evaluation.split == "validation"
    assert config.data.stratify_by == "label" and "carved label by label" in printed
    assert config.evaluation.max_new_tokens >= max(len(i) for i in INTENTS) // 8  # tokens, not characters
    assert config.evaluation.fallback_label is None
    with_oos = tmp_path / "with-oos.jsonl"
    with_oos.write_text(data.read_text() + json.dumps({"text": "what's the weather", "label": "oos"}) + "\n")
    oos_out = tmp_path / "cfg" / "oos.yaml"
    oos_args = ["init", "--data", str(with_oos), "--input", "text", "--target", "label", "--out"]
    code, printed, _ = _cli(monkeypatch, capsys, *oos_args, str(oos_out), "--base-model", str(tiny_model_dir))
    assert code == 0 and "label 'oos' reads as out of scope" in printed
    oos = load_config(oos_out).evaluation
    assert oos.fallback_label == "oos"
    assert oos.fallback_rule() == FallbackRule(None, DEFAULT_FALLBACK_MARGIN, DEFAULT_FALLBACK_MIN_SIMILARITY)
    # with a test file, 10 examples a label all train: no carve, no early stopping
    test_args = ["init", "--data", str(data), "--input", "text", "--target", "label", "--test", str(data)]
    few_out = tmp_path / "cfg" / "few.yaml"
    code, printed, _ = _cli(
        monkeypatch, capsys, *test_args, "--out", str(few_out), "--base-model", str(tiny_model_dir)
    )
    few = load_config(few_out)
    assert code == 0 and "validation: none, 10.0 examples a label all train" in printed
    assert few.data.validation_fraction == 0 and few.trainer.eval_every is None
    assert few.trainer.early_stopping_patience is None and few.evaluation.split == "test"
    assert config.data.validation_fraction == VALIDATION_FRACTION and config.trainer.early_stopping_patience
    # free text keeps the first rank tried
    text = tmp_path / "text.jsonl"
    text.write_text(
        "".join(json.dumps({"q": f"say {i}", "a": f"a different answer {i}"}) + "\n" for i in range(40))
    )
    text_out = tmp_path / "cfg" / "text.yaml"
    text_args = ["init", "--data", str(text), "--input", "q", "--target", "a", "--out", str(text_out)]
    code, printed, _ = _cli(monkeypatch, capsys, *text_args, "--base-model", str(tiny_model_dir))
    assert code == 0 and "task generation" in printed and load_config(text_out).adapter.r == RANK
    # mistakes: one line, exit 2
    code, _, err = _cli(monkeypatch, capsys, *base, "--base-model", str(tiny_model_dir))
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1
    wrong = [
        "init",
        "--data",
        str(data),
        "--input",
        "message",
        "--target",
        "label",
        "--out",
        str(tmp_path / "x.yaml"),
    ]
    code, _, err = _cli(monkeypatch, capsys, *wrong, "--base-model", str(tiny_model_dir))
    assert code == 2 and "no column 'message'" in err and "Traceback" not in err
