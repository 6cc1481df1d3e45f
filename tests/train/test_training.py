import json
import sys

import pytest
import torch

from loraforge.train.run import run_training
from loraforge.train.trainer import LoraTrainer


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train_loss"] for row in rows if "train_loss" in row}


def test_training_reduces_loss_and_writes_the_run(make_config, tmp_path):
    out = tmp_path / "run"
    result = run_training(make_config(max_steps=30, eval_every=10), out, show_progress=False)
    curve = losses(out)
    assert len(curve) == 30
    assert sum(list(curve.values())[-5:]) / 5 < 0.7 * sum(list(curve.values())[:3]) / 3
    for name in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "config.yaml",
        "eval.json",
        "loss.png",
        "README.md",
        "metrics.jsonl",
    ]:
        assert (out / name).is_file(), name
    evals = [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line
    ]
    assert [row["step"] for row in evals] == [10, 20, 30]
    assert result.summary.training.steps == 30
    assert json.loads((out / "summary.json").read_text()) == result.summary.to_json()
    assert set(result.eval_report["results"]["adapter"]) == {"accuracy", "macro_f1", "out_of_label_rate"}
    assert "r=8" in (out / "README.md").read_text()


class Interrupt(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(make_config, tmp_path):
    config = make_config(max_steps=8, checkpoint_every=3, eval_every=2)
    run_training(config, tmp_path / "full", evaluate=False, show_progress=False)

    def stop_at_4(state):
        if state.step == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(config, tmp_path / "cut", evaluate=False, show_progress=False, on_step=stop_at_4)
    run_training(config, tmp_path / "cut", resume=True, evaluate=False, show_progress=False)
    full, resumed = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(resumed) == list(range(1, 9))  # steps after the checkpoint were logged again, once
    for step in range(4, 9):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5), step


def test_resume_keeps_the_best_adapter_found_before_the_interruption(make_config, toy_data, tmp_path):
    from safetensors.torch import load_file

    # Validation targets are text the training data never shows, so the more the model fits train, the worse
    # validation gets: the best adapter is an early one, which after an interruption only a checkpoint knows.
    rows = [json.loads(line) for line in toy_data.open()]
    wrong = [{**row, "label": "JSON {} [] ()"} for row in rows]
    validation = tmp_path / "wrong.jsonl"
    validation.write_text("".join(json.dumps(row) + "\n" for row in wrong[:16]))
    config = make_config(max_steps=30, checkpoint_every=1, eval_every=1, learning_rate=1e-2)
    config.data.validation = validation
    run_training(config, tmp_path / "full", evaluate=False, show_progress=False)
    evals = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").open() if "eval_loss" in line]
    best_step = min(evals, key=lambda row: row["eval_loss"])["step"]
    assert best_step <= 27

    def interrupt_after_best(state):
        if state.step == best_step + 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(
            config, tmp_path / "cut", evaluate=False, show_progress=False, on_step=interrupt_after_best
        )
    run_training(config, tmp_path / "cut", resume=True, evaluate=False, show_progress=False)
    full_adapter = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    resumed_adapter = load_file(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    for name, value in full_adapter.items():
        torch.testing.assert_close(resumed_adapter[name], value, rtol=1e-5, atol=1e-6)


def test_early_stopping_stops_and_keeps_the_best(make_config, tmp_path, monkeypatch):
    # Scripted validation losses: best at the 2nd evaluation (step 4), then two without improvement.
    losses = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    snapshots = []

    def scripted_loss(trainer):
        snapshots.append({k: v.clone() for k, v in trainer.model.named_parameters() if v.requires_grad})
        return next(losses)

    monkeypatch.setattr(LoraTrainer, "evaluate_loss", scripted_loss)
    config = make_config(max_steps=40, eval_every=2, early_stopping_patience=2)
    result = run_training(config, tmp_path / "run", evaluate=False, show_progress=False)
    assert result.summary.training.stopped_early
    assert result.summary.training.steps == 8
    best = snapshots[1]
    handed_back = {k: v for k, v in result.model.named_parameters() if v.requires_grad}
    assert all(torch.equal(handed_back[k], best[k]) for k in best)
    assert not all(torch.equal(snapshots[-1][k], best[k]) for k in best)


def test_saved_adapter_loads_in_plain_peft_with_identical_logits(make_config, tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    ours = run_training(make_config(max_steps=5), out, evaluate=False, show_progress=False).model.eval()
    # Same attention kernel as ours (the trainer picks eager on CPU), so only the adapter can differ.
    attention = ours.get_base_model().config._attn_implementation
    base = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation=attention
    )
    theirs = PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        expected = ours(input_ids=ids).logits
        got = theirs(input_ids=ids).logits
    assert torch.equal(expected, got)
    # and the adapter actually changes the model
    with torch.no_grad(), theirs.disable_adapter():
        assert not torch.allclose(theirs(input_ids=ids).logits, got)


def test_a_nearest_classifier_writes_its_label_index_beside_the_adapter(
    make_config, tmp_path, monkeypatch, capsys
):
    """`evaluation.classifier: nearest`: train indexes its training rows in the adapter's folder and the
    evaluation answers with it: a training row's nearest row is itself. `loraforge evaluate` reads the index
    back; for an adapter without one it builds one from the config's training split."""
    from loraforge.classify.label_index import INDEX_FILE, LabelIndex
    from loraforge.cli.main import main
    from loraforge.config import dump_config
    from loraforge.data.splits import load_splits

    config = make_config(max_steps=6)
    labels = tmp_path / "labels.json"
    labels.write_text(
        json.dumps(sorted({"card_arrival", "activate_my_card", "transfer_failed", "exchange_rate"}))
    )
    update = {"labels": labels, "constrain_to_labels": True, "classifier": "nearest", "limit": None}
    config = config.model_copy(update={"evaluation": config.evaluation.model_copy(update=update)})
    out = tmp_path / "run"
    report = run_training(config, out, show_progress=False).eval_report
    index = LabelIndex.load(out / "adapter")
    splits = load_splits(config.data)
    assert len(index.states) == len(splits.train) == 48
    assert report["classifier"] == "nearest"
    train_texts = [f"Message: {row['text']}\n" for row in splits.train]
    # All 64 rows are evaluated: a `limit` sample, seeded as the validation carve is, picks the carve's rows.
    seen = [s for s in report["samples"] if any(text in s["prompt"] for text in train_texts)]
    assert len(seen) == 48 and all(
        s["adapter"] == s["reference"] and s["adapter_similarity"] > 0.9999 for s in seen
    )
    assert json.loads((out / "eval.json").read_text())["results"]["adapter"] == report["results"]["adapter"]

    (tmp_path / "config.yaml").write_text(dump_config(config))
    results = {}
    for case in ("stored", "relabelled", "removed"):
        if case == "relabelled":  # the stored index is what answers: every row now says one label
            LabelIndex(index.states, torch.zeros_like(index.label_ids), index.labels).save(out / "adapter")
        if case == "removed":
            (out / "adapter" / INDEX_FILE).unlink()
        output = tmp_path / f"eval-{case}.json"
        args = [
            "evaluate",
            str(tmp_path / "config.yaml"),
            "--adapter",
            str(out / "adapter"),
            "--output",
            str(output),
        ]
        monkeypatch.setattr(sys, "argv", ["loraforge", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 0
        results[case] = json.loads(output.read_text())["results"]["adapter"]
        assert ("indexing the config's training rows" in capsys.readouterr().err) == (case == "removed")
    assert results["stored"] == results["removed"] == report["results"]["adapter"]
    assert results["relabelled"]["accuracy"] == 0.25  # 16 of the 64 rows carry the first label
    assert not (out / "adapter" / INDEX_FILE).exists()  # built in memory, not written by evaluate
