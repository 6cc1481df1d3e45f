"""`plan`: the general model with too little data, few-shot with a handful of good examples, an adapter when
it beat few-shot on held-out data (and not when it did not)."""

from loraforge.flywheel.plan import make_plan
from loraforge.store import Store
from loraforge.store.comparisons import save_comparison
from tests.cli.test_errors import run_cli
from tests.store.calls import chat_call


def seed(store: Store, good: int, unreviewed: int = 0) -> None:
    records = [chat_call("t", f"q{i}", "a", seq=i) for i in range(good + unreviewed)]
    store.insert_calls(records)
    for i, record in enumerate(records[:good]):
        if i % 2:
            store.add_feedback(record["id"], corrected_output="b")
        else:
            store.add_feedback(record["id"], score=1.0)
    if unreviewed:
        store.add_feedback(records[-1]["id"], score=0.0)  # a bad score is reviewed, not good


def compared(store: Store, candidate: str, baseline: str, c: float, b: float) -> None:
    fig = lambda v: {"value": v, "lo": v - 0.05, "hi": v + 0.05}  # noqa: E731
    save_comparison(store, {
        "task": "t", "candidate": candidate, "baseline": baseline, "source": "dataset t:1",
        "kind": "classification", "items": 100, "inputs_hash": "h",
        "metrics": {"accuracy": {"candidate": fig(c), "baseline": fig(b), "delta": fig(c - b)}},
    })  # fmt: skip


def test_too_little_data_stays_on_the_general_model(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    seed(store, 5, unreviewed=20)
    plan = make_plan(store, "t")
    assert plan.recommendation == "general"
    assert plan.counts == {"calls": 25, "reviewed": 6, "corrected": 2, "good": 5}


def test_a_handful_of_examples_means_few_shot_until_an_adapter_wins(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    seed(store, 40)
    assert make_plan(store, "t").recommendation == "fewshot"
    compared(store, "adapter:t-v1", "fewshot", 0.50, 0.62)
    plan = make_plan(store, "t")
    assert plan.recommendation == "fewshot" and "did not beat few-shot" in plan.reasons[-1]
    assert plan.scores["adapter"].value == 0.50 and plan.scores["fewshot"].value == 0.62
    compared(store, "adapter:t-v2", "fewshot", 0.81, 0.62)
    plan = make_plan(store, "t")
    assert plan.recommendation == "finetune" and plan.scores["adapter"].side == "adapter:t-v2"


def test_enough_data_without_an_adapter_means_train_one(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    seed(Store(url), 120)
    code, out, _ = run_cli(monkeypatch, capsys, "plan", "--task", "t", "--store", url)
    assert code == 0 and out.startswith("t: finetune") and "120 reviewed as good" in out
