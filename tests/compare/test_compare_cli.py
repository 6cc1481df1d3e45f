"""`loraforge compare` end to end on scripted general and adapter servers: a dataset's test split and logged
shadow pairs, metrics with intervals, cost, the gate's exit status, saved comparisons, mistakes."""

import json
from pathlib import Path

import pytest

from loraforge.curation.datasets import DatasetFilter, build_dataset, get_dataset
from loraforge.store import Store
from tests.cli.test_errors import run_cli
from tests.compare.judge_server import create_judge
from tests.gateway.servers import ThreadServer
from tests.gateway.upstream import UpstreamControl, create_upstream
from tests.store.calls import chat_call

LABELS = ["card_arrival", "lost_card", "refund"]
PRICES = "taken: '2026-01-01'\nmodels:\n  gpt-x: {input: 1.0, output: 2.0}\n"


def run(monkeypatch, capsys, *args):
    return run_cli(monkeypatch, capsys, "compare", *args)


@pytest.fixture
def servers():
    general, specialist = UpstreamControl(), UpstreamControl()
    truth = {f"text {i}": LABELS[i % 3] for i in range(60)}
    # The adapter knows every label; the general model guesses one label, and chats instead every 4th time.
    specialist.reply = lambda text: truth.get(text, "refund")
    general.reply = lambda text: "It's about a card" if int(text.split()[-1]) % 4 == 0 else "card_arrival"
    with ThreadServer(create_upstream(general)) as g, ThreadServer(create_upstream(specialist)) as s:
        general.url, specialist.url = f"{g.url}/v1", f"{s.url}/v1"
        yield general, specialist, truth


@pytest.fixture
def setup(tmp_path, servers):
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(store_url)
    records = [chat_call("intent", text, label, seq=i) for i, (text, label) in enumerate(servers[2].items())]
    for r in records:
        r["requested_model"] = "gpt-x"
    store.insert_calls(records)
    build_dataset(store, "intent", DatasetFilter("intent", test_fraction=0.5), root=tmp_path / "ds")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(LABELS))
    prices = tmp_path / "prices.yaml"
    prices.write_text(PRICES)
    general, specialist, _ = servers
    common = [
        *("--task", "intent", "--candidate", "adapter:ad1", "--store", store_url, "--prices", str(prices)),
        *("--upstream-url", general.url, "--specialist-url", specialist.url, "--labels", str(labels)),
    ]
    yield store, common, general, specialist
    store.close()


def test_dataset_comparison_measures_both_sides_with_intervals_and_gates(monkeypatch, capsys, setup):
    store, common, general, specialist = setup
    code, out, err = run(monkeypatch, capsys, *common, "--dataset", "intent", "--json", "--gate",
                         "accuracy>=baseline-0.01 and invalid_rate<=baseline")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    n = result["items"]
    assert n == len(specialist.requests) == len(general.requests) and 10 <= n <= 50
    m = result["metrics"]
    assert m["accuracy"]["candidate"]["value"] == 1.0
    base = m["accuracy"]["baseline"]
    assert base["lo"] <= base["value"] <= base["hi"] < 0.6
    assert m["accuracy"]["delta"]["lo"] > 0  # the adapter is better, with 95% confidence
    assert m["invalid_rate"]["candidate"]["value"] == 0 and m["invalid_rate"]["baseline"]["value"] > 0
    assert 0 <= m["macro_f1"]["baseline"]["value"] < m["macro_f1"]["candidate"]["value"] == 1.0
    for side in ("candidate", "baseline"):
        assert m["latency_p50_ms"][side]["value"] <= m["latency_p95_ms"][side]["value"]
        assert m["cost_per_1k_usd"][side]["value"] > 0
    assert "gpt-x token prices" in result["cost_basis"]["baseline"]
    assert "aws-g5.xlarge $1.006/h" in result["cost_basis"]["candidate"]  # the shipped default node
    assert result["gate_passed"] is True and result["dataset_hash"]
    # Only standard fields reach the servers (a `loraforge serve` refuses unknown ones).
    assert {k for r in specialist.requests for k in r} <= {"model", "messages", "max_tokens", "temperature"}
    assert {r["model"] for r in specialist.requests} == {"ad1"} and {
        r["model"] for r in general.requests
    } == {"gpt-x"}

    code, out, _ = run(monkeypatch, capsys, *common, "--dataset", "intent:1", "--gate", "accuracy<baseline")
    assert code == 1 and "FAILED" in out and "accuracy" in out and "[" in out
    code, out, _ = run(monkeypatch, capsys, "list", "--store", common[common.index("--store") + 1])
    assert code == 0 and out.count("adapter:ad1") == 2
    code, out, _ = run(
        monkeypatch, capsys, "show", "1", "--json", "--store", common[common.index("--store") + 1]
    )
    saved = json.loads(out)
    assert saved["inputs_hash"] == result["inputs_hash"] and saved["gate_passed"] is True


def test_fewshot_sides_take_examples_from_the_train_split_only(monkeypatch, capsys, setup):
    store, common, general, specialist = setup
    args = [*common, "--dataset", "intent:1", "--k", "4", "--json"]
    code, out, err = run(monkeypatch, capsys, *args, "--baseline", "fewshot:base")
    assert code == 0, err
    result = json.loads(out)
    dataset = get_dataset(store, "intent", 1)
    rows = [
        json.loads(line)["messages"] for line in Path(dataset.path, "train.jsonl").read_text().splitlines()
    ]
    train = {m[0]["content"]: m[1]["content"] for m in rows}
    test_rows = Path(dataset.path, "test.jsonl").read_text().splitlines()
    tests = {json.loads(line)["messages"][0]["content"] for line in test_rows}
    assert result["fewshot"] == {"k": 4, "examples": len(train), "from": "dataset intent v1 (train split)"}
    asked = [r for r in specialist.requests if r["model"] == "base"]
    assert len(asked) == result["items"] == len(tests)
    for request in asked:
        *shots, question = request["messages"]
        assert question["content"] in tests and len(shots) == 8
        pairs = list(zip(shots[::2], shots[1::2], strict=True))
        assert all(train[user["content"]] == answer["content"] for user, answer in pairs)  # train rows
        assert not {user["content"] for user, _ in pairs} & tests  # no test row is ever an example
    assert "aws-g5.xlarge" in result["cost_basis"]["baseline"]  # a specialist model: priced by hardware

    general.requests.clear()
    code, out, err = run(monkeypatch, capsys, *args, "--candidate", "fewshot", "--baseline", "general")
    assert code == 0, err
    result = json.loads(out)
    with_examples = [r for r in general.requests if len(r["messages"]) == 9]
    assert len(with_examples) == len(general.requests) // 2 == result["items"]
    assert "gpt-x token prices" in result["cost_basis"]["candidate"]
    assert (result["candidate"], result["baseline"]) == ("fewshot", "general")


def test_shadow_pairs_are_compared_from_the_store(monkeypatch, capsys, setup):
    store, common, general, specialist = setup
    pairs = []
    for i in range(12):
        primary = chat_call("intent", f"s{i}", "card_arrival", seq=100 + i)
        shadow = chat_call("intent", f"s{i}", "card_arrival" if i % 3 else "refund", seq=100 + i)
        primary.update(served_by="general", route_stage="shadow", requested_model="gpt-x")
        shadow.update(served_by="adapter:ad1", route_stage="shadow", shadow_of=primary["id"])
        pairs += [primary, shadow]
    store.insert_calls(pairs)
    store.add_feedback(pairs[0]["id"], corrected_output="refund")  # one reference from feedback
    code, out, err = run(monkeypatch, capsys, *common, "--shadow", "--since", "30d", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["items"] == 12 and result["source"] == "shadow pairs since 30d"
    assert result["metrics"]["agreement"]["candidate"]["value"] == pytest.approx(8 / 12)
    assert result["metrics"]["accuracy"]["candidate"]["value"] == 1.0  # on the one item with a reference
    assert general.requests == [] and specialist.requests == []  # nothing asked: the pairs were logged


def test_free_text_comparison_uses_the_judge(monkeypatch, capsys, setup, tmp_path):
    store, common, general, specialist = setup
    specialist.reply = lambda text: f"GOOD {text}"
    calls: list[dict] = []
    with ThreadServer(create_judge(calls)) as judge:
        args = [a for a in common if a != "--labels" and not a.endswith("labels.json")]
        judged = ["--judge-url", f"{judge.url}/v1", "--judge-model", "j1", "--gate", "win_rate>=0.5"]
        code, out, err = run(monkeypatch, capsys, *args, "--dataset", "intent", "--kind", "text", *judged)
    assert code == 0, err
    assert "win_rate" in out and "judge j1:" in out and "rouge_l" in out and "PASSED" in out
    assert len(calls) == 2 * len(specialist.requests)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "intent", "--gate", "accurcy>0"], "unknown metric"),
        (["--dataset", "nope"], "no dataset 'nope'"),
        (["--dataset", "intent", "--shadow"], "either --dataset or --shadow"),
        (["--shadow", "--since", "yesterday"], "--since 'yesterday'"),
        (["--dataset", "intent", "--baseline", "gpt"], "--baseline 'gpt'"),
        (["--dataset", "intent", "--judge-url", "http://x/v1"], "--judge-model"),
        (["--dataset", "intent", "--baseline", "fewshot", "--k", "0"], "--k must be between 1 and 64"),
        (["--dataset", "intent", "--baseline", "fewshot:"], "--baseline 'fewshot:'"),
        (["--shadow", "--baseline", "fewshot"], "--shadow compares an adapter"),
        (["--dataset", "intent", "--k", "4"], "--k applies to a fewshot side"),
    ],
)
def test_mistakes_exit_2_with_one_line_and_ask_nothing(monkeypatch, capsys, setup, extra, message):
    store, common, general, specialist = setup
    code, _, err = run(monkeypatch, capsys, *common, *extra)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert general.requests == [] and specialist.requests == []
