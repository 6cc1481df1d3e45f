"""Evaluation on the serving engine gives the HF backend's greedy outputs (fp32: the same arithmetic), for the
base model and an adapter, free and constrained to labels; several adapters share one batch stream."""

import json
import sys

import pytest
import yaml

from loraforge.config.schema import EvaluationConfig, PromptConfig, TargetConfig
from loraforge.config.tasks import (
    DEFAULT_FALLBACK_MARGIN,
    DEFAULT_FALLBACK_MIN_SIMILARITY,
    DEFAULT_FALLBACK_THRESHOLD,
    FallbackRule,
)
from loraforge.data.examples import ExampleBuilder
from loraforge.errors import ConfigError
from loraforge.evaluate.engine_backend import EngineBackend
from loraforge.evaluate.runner import evaluate_records
from loraforge.inference.hf import ADAPTER, GenerationModel, attach_adapter
from loraforge.models import load_causal_lm, load_tokenizer, resolve_model
from tests.serve.conftest import make_adapter_registry

LABELS = ["card_arrival", "card_linking", "exchange_rate", "transfer_failed"]
TEXTS = [
    "hi",
    "where is my card now?",
    "rate for euros",
    "my transfer failed twice",
    "x",
    "card linking help",
]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter_registry(tiny_model_dir, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def engine_backend(tiny_model_dir, adapter_dir):
    adapters = {ADAPTER: adapter_dir / "alpha", "beta": adapter_dir / "beta"}
    return EngineBackend.load(str(tiny_model_dir), adapters, precision="fp32")


@pytest.fixture(scope="module")
def hf_backend(tiny_model_dir, adapter_dir):
    resolved = resolve_model(str(tiny_model_dir))
    return GenerationModel(
        attach_adapter(load_causal_lm(resolved), adapter_dir / "alpha"), load_tokenizer(resolved)
    )


@pytest.fixture(scope="module")
def prompts(hf_backend):
    return [hf_backend.chat_prompt([{"role": "user", "content": text}]) for text in TEXTS]


@pytest.mark.parametrize("allowed", [None, LABELS], ids=["free", "labels"])
def test_the_engine_gives_the_hf_outputs(engine_backend, hf_backend, prompts, allowed):
    runs = [None, ADAPTER]
    got = engine_backend.generate_runs(prompts, runs, max_new_tokens=8, allowed_outputs=allowed)
    expected = hf_backend.generate_runs(
        prompts, runs, max_new_tokens=8, allowed_outputs=allowed, batch_size=4
    )
    assert got == expected
    assert got[None] != got[ADAPTER]  # the adapter changes outputs: a dropped LoRA term would show
    if allowed:
        assert all(out in LABELS for run in got.values() for out in run)
    else:
        assert not all(out in LABELS for out in got[None])


def test_a_lone_adapter_is_merged_into_the_base(tiny_model_dir, adapter_dir, hf_backend, prompts):
    merged = EngineBackend.load(
        str(tiny_model_dir), {ADAPTER: adapter_dir / "alpha"}, precision="fp32", merge=True
    )
    slots, run = set(), merged.engine.runner.run
    merged.engine.runner.run = lambda seqs, is_prefill: (
        slots.update(s.adapter_index for s in seqs) or run(seqs, is_prefill)
    )
    for allowed in (None, LABELS):
        got = merged.generate_runs(prompts, [ADAPTER], max_new_tokens=8, allowed_outputs=allowed)
        assert got == hf_backend.generate_runs(
            prompts, [ADAPTER], max_new_tokens=8, allowed_outputs=allowed, batch_size=4
        )
    assert slots == {0}  # no LoRA work: the adapter is in the base weights
    with pytest.raises(ValueError, match="merged into the base"):
        merged.generate_runs(prompts, [None, ADAPTER])


def test_several_adapters_run_in_one_batch_stream(engine_backend, prompts):
    engine = engine_backend.engine
    # Both adapters resident first: they load off the step loop, and on busy cores one could still be
    # loading when the other's short runs finish, leaving no step with both to record.
    engine_backend.generate_runs(prompts[:1], [ADAPTER, "beta"], max_new_tokens=1)
    slots_per_step, run = [], engine.runner.run

    def recording_run(seqs, is_prefill):
        slots_per_step.append({s.adapter_index for s in seqs})
        return run(seqs, is_prefill)

    engine.runner.run = recording_run
    try:
        done = []
        both = engine_backend.generate_runs(prompts, [ADAPTER, "beta"], max_new_tokens=6, on_done=done.append)
    finally:
        engine.runner.run = run
    assert sum(done) == 2 * len(prompts)
    assert any(len(slots) == 2 for slots in slots_per_step)
    for name in (ADAPTER, "beta"):
        assert both[name] == engine_backend.generate_runs(prompts, [name], max_new_tokens=6)[name]


def test_the_hf_backend_runs_one_adapter(hf_backend, prompts):
    with pytest.raises(ConfigError, match="one adapter"):
        hf_backend.generate_runs(prompts, [ADAPTER, "beta"])


def test_evaluate_cli_compares_several_adapters(monkeypatch, capsys, tmp_path, tiny_model_dir, adapter_dir):
    from loraforge.cli.main import main

    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"text": t, "label": LABELS[i % 4]}) + "\n" for i, t in enumerate(TEXTS))
    )
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(LABELS))
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base_model": str(tiny_model_dir),
                "data": {"train": str(data), "test": str(data)},
                "prompt": {"template": "Message: {text}\nIntent:"},
                "target": {"column": "label"},
                "trainer": {"precision": "fp32"},
                "evaluation": {
                    "task": "classification",
                    "labels": str(labels),
                    "constrain_to_labels": True,
                    "max_new_tokens": 8,
                },
            }
        )
    )
    out = tmp_path / "eval.json"
    args = [
        "evaluate",
        str(config),
        "--adapter",
        str(adapter_dir / "alpha"),
        "--adapter",
        str(adapter_dir / "beta"),
    ]
    monkeypatch.setattr(sys, "argv", ["loraforge", *args, "--baseline", "--output", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    report = json.loads(out.read_text())
    assert list(report["results"]) == ["base", "alpha", "beta"]
    assert report["results"]["alpha"]["out_of_label_rate"] == 0.0
    assert "Δ (beta" in capsys.readouterr().out  # a column per adapter against the base model
    monkeypatch.setattr(sys, "argv", ["loraforge", *args, "--backend", "hf"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "one adapter at a time" in capsys.readouterr().err


def test_label_probabilities_are_the_models_over_what_the_labels_allow(engine_backend, hf_backend, prompts):
    """classify_runs' probability of each chosen label: at each of its tokens (and the EOS closing it), the
    model's probability renormalized over the tokens the label set allowed there; checked against the HF
    model's logits of the prompt followed by that label."""
    import torch

    from loraforge.serve.engine.constraints import ChoiceConstraint

    scored = engine_backend.classify_runs(prompts, [ADAPTER], LABELS, max_new_tokens=8)[ADAPTER]
    assert [row.label for row in scored] == engine_backend.generate_runs(
        prompts, [ADAPTER], max_new_tokens=8, allowed_outputs=LABELS
    )[ADAPTER]
    tokenizer, model = hf_backend.tokenizer, hf_backend.model
    constraint = ChoiceConstraint.from_strings(LABELS, tokenizer)
    for prompt, row in zip(prompts, scored, strict=True):
        label, probability = row.label, row.probability
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        label_ids = [*tokenizer(label, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + label_ids])).logits[0].double()
        expected = 1.0
        for step, token in enumerate(label_ids):
            allowed = constraint.allowed(label_ids[:step])
            row = logits[len(prompt_ids) - 1 + step, allowed].softmax(-1)
            expected *= row[allowed.index(token)].item()
        assert probability == pytest.approx(expected, rel=1e-4, abs=1e-6), label
    assert len({round(row.probability, 4) for row in scored}) > 1  # not a constant


def test_a_fallback_label_replaces_labels_the_model_is_unsure_of(engine_backend, tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    prompt = PromptConfig(template="{text}", chat_template=True)
    builder = ExampleBuilder(prompt, TargetConfig(column="label"), engine_backend.tokenizer)
    records = [{"text": text, "label": "exchange_rate"} for text in TEXTS]
    prompts = [builder.build(record).prompt for record in records]
    scored = engine_backend.classify_runs(prompts, [ADAPTER], LABELS, max_new_tokens=8)[ADAPTER]
    probabilities = sorted(row.probability for row in scored)
    threshold = (probabilities[1] + probabilities[2]) / 2  # two rows below it
    config = EvaluationConfig(
        task="classification",
        labels=tmp_path / "labels.json",
        constrain_to_labels=True,
        max_new_tokens=8,
        fallback_label="exchange_rate",
        fallback_threshold=threshold,
    )
    report = evaluate_records(engine_backend, builder, records, config, show_progress=False)
    samples = report["samples"]
    for sample, row in zip(samples, scored, strict=True):
        label, probability = row.label, row.probability
        assert sample[f"{ADAPTER}_label"] == label
        assert sample[f"{ADAPTER}_probability"] == pytest.approx(probability, abs=1e-6)
        assert sample[ADAPTER] == (label if probability >= threshold else "exchange_rate")
    assert report["fallback"] == {
        "label": "exchange_rate",
        "threshold": threshold,
        "margin": None,
        "min_similarity": None,
    }
    assert report["results"][ADAPTER]["accuracy"] == sum(s[ADAPTER] == "exchange_rate" for s in samples) / 6
    with pytest.raises(ConfigError, match="'oos' is not in the label set"):
        unknown = config.model_copy(update={"fallback_label": "oos"})
        evaluate_records(engine_backend, builder, records, unknown, show_progress=False)


def test_a_fallback_label_must_be_a_label_and_needs_the_engine(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    common = {"task": "classification", "labels": tmp_path / "labels.json", "fallback_label": "oos"}
    with pytest.raises(ValueError, match="fallback_label needs constrain_to_labels"):
        EvaluationConfig(**common)
    with pytest.raises(ValueError, match="fallback_label needs constrain_to_labels"):
        EvaluationConfig(**common, constrain_to_labels=True, backend="hf")
    decoded = EvaluationConfig(**common, constrain_to_labels=True)
    assert decoded.fallback_rule() == FallbackRule(DEFAULT_FALLBACK_THRESHOLD)
    with pytest.raises(ValueError, match="fallback_margin needs classifier 'nearest'"):
        EvaluationConfig(**common, constrain_to_labels=True, fallback_margin=0.1)
    with pytest.raises(ValueError, match="fallback_min_similarity needs classifier 'nearest'"):
        EvaluationConfig(**common, constrain_to_labels=True, fallback_min_similarity=0.5)
    nearest = EvaluationConfig(**common, constrain_to_labels=True, classifier="nearest")
    # the probability only where asked
    assert nearest.fallback_rule() == FallbackRule(
        None, DEFAULT_FALLBACK_MARGIN, DEFAULT_FALLBACK_MIN_SIMILARITY
    )
    asked = {"fallback_threshold": 0.3, "fallback_margin": 0.2, "fallback_min_similarity": -0.5}
    assert nearest.model_copy(update=asked).fallback_rule() == FallbackRule(0.3, 0.2, -0.5)


def test_answer_states_are_what_the_lm_head_reads_at_the_prompts_last_token(
    engine_backend, hf_backend, prompts
):
    """The engine's answer state under an adapter: the HF model's final (normed) hidden state at the
    prompt's last position, the row its logits for the first output token come from; the same from a
    constrained classification pass, and again when the prompt's start comes from the prefix cache."""
    import torch

    states = engine_backend.answer_states(prompts, ADAPTER)
    tokenizer, model = hf_backend.tokenizer, hf_backend.model
    for prompt, state in zip(prompts, states, strict=True):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        assert torch.allclose(state, hidden.float(), atol=1e-4), prompt
    scored = engine_backend.classify_runs(prompts, [ADAPTER], LABELS, 8, with_states=True)[ADAPTER]
    assert torch.allclose(torch.stack([row.state for row in scored]), states, atol=1e-5)
    assert torch.allclose(engine_backend.answer_states(prompts, ADAPTER), states, atol=1e-5)
    assert not torch.allclose(engine_backend.answer_states(prompts, "beta"), states, atol=1e-3)


def test_the_nearest_classifier_answers_with_the_label_of_the_closest_training_row(engine_backend, tmp_path):
    """Indexed on the evaluated rows themselves, each row's nearest training row is itself: every answer is
    its reference (cosine 1), whatever the random model decodes; the decoded label is kept beside it."""
    from loraforge.classify.label_index import LabelIndex

    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    builder = ExampleBuilder(
        PromptConfig(template="{text}", chat_template=True),
        TargetConfig(column="label"),
        engine_backend.tokenizer,
    )
    records = [{"text": text, "label": LABELS[i % len(LABELS)]} for i, text in enumerate(TEXTS)]
    prompts = [builder.build(record).prompt for record in records]
    index = LabelIndex.build(
        engine_backend.answer_states(prompts, "beta"), [r["label"] for r in records], LABELS
    )
    config = EvaluationConfig(
        task="classification",
        labels=tmp_path / "labels.json",
        constrain_to_labels=True,
        max_new_tokens=8,
        classifier="nearest",
    )

    def nearest(config: EvaluationConfig, indexes: dict) -> dict:
        return evaluate_records(
            engine_backend, builder, records, config, adapters=("beta",), indexes=indexes, show_progress=False
        )

    report = nearest(config, {"beta": index})
    assert report["classifier"] == "nearest"
    assert report["results"]["beta"]["accuracy"] == 1.0
    decoded = engine_backend.generate_runs(prompts, ["beta"], max_new_tokens=8, allowed_outputs=LABELS)[
        "beta"
    ]
    assert any(
        label != record["label"] for label, record in zip(decoded, records, strict=True)
    )  # not decoding
    for sample, label in zip(report["samples"], decoded, strict=True):
        assert sample["beta"] == sample["beta_nearest"] == sample["reference"]
        assert sample["beta_similarity"] == pytest.approx(1.0, abs=1e-5)
        assert sample["beta_label"] == label
    with pytest.raises(ConfigError, match="no label index for beta"):
        nearest(config, {})

    # A fallback label: a row keeps its own label (cosine 1) only when at least the margin more similar to it
    # than to the fallback label's nearest row; a margin between the rows' gaps sends some rows each way.
    fallback = LABELS[0]
    found = index.nearest(engine_backend.answer_states(prompts, "beta"), fallback)
    gaps = sorted({round(1.0 - n.fallback_similarity, 4) for n in found if n.label != fallback})
    assert len(gaps) > 1
    margin = (gaps[0] + gaps[1]) / 2
    rule = {"fallback_label": fallback, "fallback_margin": margin, "fallback_min_similarity": -1.0}
    report = nearest(config.model_copy(update=rule), {"beta": index})
    assert report["fallback"] == {
        "label": fallback,
        "threshold": None,
        "margin": margin,
        "min_similarity": -1.0,
    }
    answers = [s["beta"] for s in report["samples"]]
    for sample, neighbour in zip(report["samples"], found, strict=True):
        assert sample["beta_fallback_similarity"] == pytest.approx(neighbour.fallback_similarity, abs=1e-5)
        gap = sample["beta_similarity"] - sample["beta_fallback_similarity"]
        assert sample["beta"] == (sample["reference"] if gap >= margin else fallback)
    assert answers.count(fallback) > sum(r["label"] == fallback for r in records)
    assert set(answers) != {fallback}

    # With no margin, a row less similar than `fallback_min_similarity` to its nearest row is the fallback's:
    # indexed on another adapter's answer states, the rows' similarities spread below 1.
    other = LabelIndex.build(
        engine_backend.answer_states(prompts, ADAPTER), [r["label"] for r in records], LABELS
    )
    found = other.nearest(engine_backend.answer_states(prompts, "beta"), fallback)
    similarities = sorted({round(n.similarity, 4) for n in found if n.label != fallback})
    assert len(similarities) > 1 and similarities[-1] < 0.999
    floor = (similarities[0] + similarities[1]) / 2
    rule = {"fallback_label": fallback, "fallback_margin": 0.0, "fallback_min_similarity": floor}
    report = nearest(config.model_copy(update=rule), {"beta": other})
    for sample, neighbour in zip(report["samples"], found, strict=True):
        assert sample["beta_similarity"] == pytest.approx(neighbour.similarity, abs=1e-5)
        kept = neighbour.label != fallback and neighbour.similarity >= floor
        assert sample["beta"] == (neighbour.label if kept else fallback)
    answers = [s["beta"] for s in report["samples"]]
    sent = [a == fallback for a, n in zip(answers, found, strict=True) if n.label != fallback]
    assert any(sent) and not all(sent)  # the floor lies between the two least similar rows
    no_rows = config.model_copy(update={"fallback_label": LABELS[-1]})
    only_some = LabelIndex.build(index.states[:2], [r["label"] for r in records[:2]], LABELS)
    with pytest.raises(ConfigError, match="no training rows of the fallback label"):
        nearest(no_rows, {"beta": only_some})
    with pytest.raises(ValueError, match="classifier 'nearest' needs constrain_to_labels"):
        EvaluationConfig(task="classification", labels=tmp_path / "labels.json", classifier="nearest")
