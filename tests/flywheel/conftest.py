"""A loop on real parts for flywheel tests: a scripted general model (always answers "unsure"), the
engine serving the tiny random Llama as the adapters' server (adapters registered by path under its
`--adapter-root`), a gateway in front, and a store seeded with reviewed calls of task `intents`."""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from openai import OpenAI

from loraforge.flywheel.policy import FlywheelPolicy, load_policy
from loraforge.store import Store
from tests.gateway.conftest import start_gateway
from tests.gateway.servers import ThreadServer
from tests.gateway.upstream import UpstreamControl, create_upstream
from tests.serve.api.conftest import start_server
from tests.store.calls import chat_call

TASK = "intents"
LABELS = ["card_arrival", "exchange_rate", "lost_card"]
SYSTEM = "Classify the banking query. Answer with the label only."


@dataclass
class Loop:
    root: Path
    store_url: str
    store: Store
    general: UpstreamControl
    specialist_url: str
    gateway_url: str
    app: object

    def policy_file(self, **changes) -> Path:
        """A policy for the tiny model; `changes` replace top-level sections."""
        config = self.root / "train.yaml"
        config.write_text(yaml.safe_dump(TRAIN_CONFIG))
        raw = {
            "task": TASK,
            "train": {"config": str(config), "runs_dir": str(self.root / "runs")},
            "data": {"test_fraction": 0.25},
            "trigger": {"min_new_examples": 20},
            "gate": "exact_match >= baseline",
            "compare": {"max_tokens": 6, "concurrency": 4},
            "rollout": [
                {"stage": "shadow", "min_calls": 3},
                {"stage": "canary", "percent": 50, "min_calls": 3},
                {"stage": "full"},
            ],
            "limits": {"max_fallback_rate": 0.5, "max_invalid_rate": 0.5, "min_calls": 3},
            "serving": {
                "general_url": self.general.url,
                "general_model": "stub-model",
                "specialist_url": self.specialist_url,
            },
            "lock_lease": "3s",
            **changes,
        }
        path = self.root / "policy.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    def policy(self, **changes) -> FlywheelPolicy:
        return load_policy(self.policy_file(**changes))

    def seed(self, n: int, start: int = 0) -> None:
        """n logged calls of the general model, each corrected by a reviewer with its true label."""
        records = []
        for i in range(start, start + n):
            label = LABELS[i % len(LABELS)]
            records.append(chat_call(TASK, f"query {i} about {label.replace('_', ' ')}", "unsure",
                                     system=SYSTEM, seq=i))  # fmt: skip
        self.store.insert_calls(records)
        for record, i in zip(records, range(start, start + n), strict=True):
            self.store.add_feedback(record["id"], corrected_output=LABELS[i % len(LABELS)])

    def traffic(self, n: int, prefix: str = "live") -> list[str]:
        """n calls of the task through the gateway (distinct users, so a canary splits them); who answered."""
        client = OpenAI(base_url=f"{self.gateway_url}/v1", api_key="sk-x", max_retries=0, timeout=60)
        served = []
        for i in range(n):
            raw = client.chat.completions.with_raw_response.create(
                model="stub-model",
                messages=[
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"{prefix} {i}"},
                ],
                max_tokens=4,
                temperature=0,
                user=f"{prefix}-{i}",
                extra_headers={"X-Loraforge-Task": TASK},
            )
            raw.parse()
            served.append(raw.headers["x-loraforge-served-by"])
        return served

    def wait_for_route(self, seq: int) -> None:
        deadline = time.monotonic() + 10
        while True:
            route = self.app.state.routes.routes.get(TASK)
            if (route.seq if route else 0) >= seq:
                return
            assert time.monotonic() < deadline, "the gateway did not pick up the route"
            time.sleep(0.05)


TRAIN_CONFIG = {
    "base_model": "TINY",  # replaced by the fixture
    "data": {"train": "unused.jsonl"},
    "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
    "trainer": {"max_steps": 6, "batch_size": 4, "learning_rate": 5e-3, "precision": "fp32",
                "warmup_ratio": 0.0, "checkpoint_every": 2, "eval_every": 1000},
}  # fmt: skip


@pytest.fixture(scope="module")
def specialist(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("flywheel")
    server = start_server(tiny_model_dir, None, api_key=None, adapter_root=root)
    yield root, server.url + "/v1"
    server.stop()


@pytest.fixture
def loop(specialist, tiny_model_dir, tmp_path_factory):
    root = specialist[0] / tmp_path_factory.mktemp("t").name
    root.mkdir()
    TRAIN_CONFIG["base_model"] = str(tiny_model_dir)
    store_url = f"sqlite:///{root / 'store.db'}"
    general = UpstreamControl(reply="unsure")
    with ThreadServer(create_upstream(general)) as upstream:
        general.url = f"{upstream.url}/v1"
        settings, app, server = start_gateway(
            root, store_url, general.url, specialist_url=specialist[1], route_refresh_s=0.1, timeout_s=60.0
        )
        store = Store(store_url)
        with server:
            yield Loop(root, store_url, store, general, specialist[1], server.url, app)
        store.close()


def turn_rows(store: Store) -> list[dict]:
    from loraforge.flywheel.records import list_runs

    return [
        json.loads(json.dumps({"id": r.id, "step": r.step, "status": r.status})) for r in list_runs(store)
    ]
