"""The whole switch on Banking77 with real parts (tiny random Llama, so it runs on any CPU): traffic through
the gateway to a `loraforge serve` of the base model standing in for the general API, corrections as
feedback, a dataset, an adapter trained on it and served by a second `loraforge serve`; then `compare`
(the adapter beats the prompted base model, with intervals), shadow, full, and `report cost`.

Run with `-s` to see the comparison table and the cost report."""

import json
import shutil
from itertools import islice

import httpx
import pytest
from openai import OpenAI

from loraforge.config import validate_config
from loraforge.curation.datasets import DatasetFilter, build_dataset
from loraforge.store import Store
from loraforge.store.output_spec import OutputSpec
from loraforge.store.routes import set_route
from loraforge.train.run import run_training
from tests.cli.test_errors import run_cli
from tests.conftest import SHARED_DATA
from tests.gateway.conftest import start_gateway
from tests.serve.api.conftest import start_server

BANKING77 = SHARED_DATA / "banking77"
LABELS = ["card_arrival", "exchange_rate", "lost_or_stolen_card"]
PER_LABEL = 24
SYSTEM = "Classify the banking query into one of: " + ", ".join(LABELS) + ". Answer with the label only."


def examples():
    by_label = {label: [] for label in LABELS}
    with (BANKING77 / "train.jsonl").open() as handle:
        for row in map(json.loads, handle):
            if row["label"] in by_label and len(by_label[row["label"]]) < PER_LABEL:
                by_label[row["label"]].append(row)
    rows = [row for group in zip(*by_label.values(), strict=True) for row in group]  # interleaved
    return rows


cli = run_cli


@pytest.mark.slow  # trains an adapter and runs three servers: about a minute on 2 cores
@pytest.mark.skipif(not (BANKING77 / "train.jsonl").is_file(), reason="Banking77 is not in shared/data")
def test_banking77_adapter_beats_the_prompted_base_model_and_saves(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    registry = tmp_path / "adapters"
    registry.mkdir()
    general = start_server(tiny_model_dir, None, api_key=None)
    specialist = start_server(tiny_model_dir, registry, api_key=None)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    settings, app, server = start_gateway(
        tmp_path, store_url, general.url + "/v1", specialist_url=specialist.url + "/v1", timeout_s=60.0,
        route_refresh_s=0.2,
    )  # fmt: skip
    store = Store(store_url)
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps(LABELS))
    prices = tmp_path / "prices.yaml"  # the stand-in general model, priced like gpt-4o-mini
    prices.write_text("taken: '2025-06-01'\nmodels:\n  tiny-llama: {input: 0.15, output: 0.60}\n")
    try:
        with server:
            client = OpenAI(base_url=f"{server.url}/v1", api_key="sk-x", max_retries=0, timeout=60)
            model = client.models.list().data[0].id

            def ask(row, user):
                raw = client.chat.completions.with_raw_response.create(
                    model=model,
                    messages=[
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": row["text"]},
                    ],
                    max_tokens=8,
                    temperature=0,
                    user=user,
                    extra_headers={"X-Loraforge-Task": "banking77"},
                )
                raw.parse()
                return raw.headers["x-loraforge-call-id"], raw.headers["x-loraforge-served-by"]

            # 1. Traffic on the general model, corrected by a reviewer (feedback with the true label).
            rows = examples()
            for i, row in enumerate(rows):
                call_id, served_by = ask(row, f"u{i}")
                assert served_by == "general"
                httpx.post(
                    f"{server.url}/v1/feedback", json={"call_id": call_id, "corrected_output": row["label"]}
                )
            # 2. A dataset from the logged calls, with the corrections as outputs; an adapter trained on it.
            built = build_dataset(
                store,
                "b77",
                DatasetFilter("banking77", use_corrections=True, test_fraction=0.3),
                root=tmp_path / "ds",
            )
            config = validate_config(
                {
                    "base_model": str(tiny_model_dir),
                    "data": {"train": str(built.path / "train.jsonl")},
                    "adapter": {"r": 16, "alpha": 32, "dropout": 0.0},
                    "trainer": {"max_steps": 60, "batch_size": 8, "learning_rate": 5e-3, "precision": "fp32",
                                "warmup_ratio": 0.0},
                }
            )  # fmt: skip
            run_training(config, tmp_path / "run", evaluate=False, show_progress=False)
            shutil.copytree(tmp_path / "run" / "adapter", registry / "b77")

            # 3. Head to head on the test split: the adapter beats the prompted base model, with intervals.
            common = ["--task", "banking77", "--store", store_url, "--prices", str(prices)]
            code, out, err = cli(
                monkeypatch, capsys, "compare", *common, "--candidate", "adapter:b77", "--dataset", "b77",
                "--labels", str(labels_file), "--upstream-url", general.url + "/v1",
                "--specialist-url", specialist.url + "/v1", "--max-tokens", "8",
                "--gate", "accuracy>baseline",
            )  # fmt: skip
            show(capsys, out)
            assert code == 0, out + err
            code, out, _ = cli(monkeypatch, capsys, "compare", "show", "1", "--json", "--store", store_url)
            accuracy = json.loads(out)["metrics"]["accuracy"]
            assert accuracy["candidate"]["value"] > accuracy["baseline"]["value"]
            assert (
                accuracy["candidate"]["lo"] <= accuracy["candidate"]["value"] <= accuracy["candidate"]["hi"]
            )
            assert accuracy["delta"]["lo"] > 0

            # 4. Shadow, then full: the adapter answers, the gateway logs who did.
            change = set_route(
                store, "banking77", "shadow", "b77", output=OutputSpec("classification", tuple(LABELS))
            )
            _wait(app, change.seq)
            for i, row in enumerate(islice(rows, 12)):
                assert ask(row, f"s{i}")[1] == "general"
            change = set_route(
                store, "banking77", "full", "b77", output=OutputSpec("classification", tuple(LABELS))
            )
            _wait(app, change.seq)
            served = [ask(row, f"f{i}")[1] for i, row in enumerate(islice(rows, 12))]
            assert set(served) <= {"adapter:b77", "fallback"} and "adapter:b77" in served
        code, out, err = cli(
            monkeypatch, capsys, "report", "cost", *common, "--specialist-url", specialist.url + "/v1"
        )
        show(capsys, out)
        assert code == 0, err
        code, out, _ = cli(monkeypatch, capsys, "report", "cost", *common, "--json",
                           "--specialist-url", specialist.url + "/v1")  # fmt: skip
        report = json.loads(out)["tasks"]["banking77"]
        adapter = report["by_who"]["adapter:b77"]
        assert adapter["spend_usd"] > 0 and adapter["unpriced_calls"] == 0
        assert adapter["latency_p50_ms"] > 0 and report["savings_usd"] is not None
    finally:
        store.close()
        general.stop()
        specialist.stop()


def show(capsys, text):
    with capsys.disabled():
        print(text)


def _wait(app, seq):
    import time

    deadline = time.monotonic() + 10
    while (app.state.routes.routes.get("banking77") or type("r", (), {"seq": 0})).seq != seq:
        assert time.monotonic() < deadline
        time.sleep(0.05)
