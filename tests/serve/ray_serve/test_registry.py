"""Adapters registered at run time under --ray reach every replica (serve/ray_serve/registry.py), on a
deployment started from a `loraforge deploy ray` file."""

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import yaml

from loraforge.models.tiny_adapters import write_random_adapter
from loraforge.serve.ray_serve.deploy_file import load_deployment
from loraforge.serve.ray_serve.launch import deploy
from loraforge.serve.ray_serve.options import REPLICA_HEADER
from loraforge.serve.ray_serve.registry import SYNC_INTERVAL_S, ReplicaAdapters, drop_registry
from tests.serve.ray_serve.conftest import API_KEY, from_every_replica

pytestmark = pytest.mark.slow
ADMIN_KEY = "ray-admin"
REPLICAS = 2


class FakeEngine:
    """What ReplicaAdapters calls on an AsyncEngine, recorded; `busy` names refuse to unload."""

    def __init__(self) -> None:
        self.registered: dict[str, Path] = {}
        self.busy: set[str] = set()

    def register_adapter(self, name: str, path: Path) -> None:
        self.registered[name] = path

    async def prepare_adapter(self, name: str, path: Path | None = None) -> None:
        if name in self.busy:
            raise RuntimeError(f"{name} in use")
        self.registered[name] = path

    async def unload_adapter(self, name: str) -> bool:
        if name in self.busy:
            raise RuntimeError(f"{name} in use")
        return self.registered.pop(name, None) is not None


def test_replicas_follow_the_registry(ray_cluster, tmp_path):
    """Two replicas' views of one registry: registrations, moves and deletions reach the other one; what
    fails there (in use) is retried at the next sync."""

    async def scenario() -> None:
        drop_registry()
        a, b = FakeEngine(), FakeEngine()
        one, two = ReplicaAdapters(a), ReplicaAdapters(b)
        a.register_adapter("new", tmp_path / "v1")  # replica one loaded it for a client...
        await one.record("new", str(tmp_path / "v1"), pinned=True)  # ...and tells the others
        await two.sync()
        assert b.registered == {"new": (tmp_path / "v1").resolve()} and two.pinned("new")
        await one.record("new", str(tmp_path / "v2"), pinned=False)  # re-registered elsewhere: moved
        b.busy.add("new")
        await two.sync()
        assert b.registered["new"] == (tmp_path / "v1").resolve()  # in use: kept for now
        b.busy.clear()
        await two.sync()
        assert b.registered["new"] == (tmp_path / "v2").resolve() and not two.pinned("new")
        await one.forget("new")  # deleted through replica one
        await two.sync()
        assert b.registered == {}
        late = ReplicaAdapters(FakeEngine())  # a replica started later (autoscaling) catches up
        await one.record("other", str(tmp_path / "o"), pinned=False)
        await late.sync()
        assert late.engine.registered == {"other": (tmp_path / "o").resolve()}

    asyncio.run(scenario())
    drop_registry()


def models_per_replica(url: str) -> dict[str, set[str]]:
    """Each replica's /v1/models."""

    def ask() -> tuple[str, set[str]]:
        r = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
        assert r.status_code == 200, r.text
        return r.headers[REPLICA_HEADER], {m["id"] for m in r.json()["data"]}

    return from_every_replica(ask, REPLICAS)


def greedy(url: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "How do I activate my card?", "max_tokens": 6, "temperature": 0}
    return httpx.post(
        url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
    )


def test_an_adapter_registered_on_one_replica_is_known_to_all(
    ray_cluster, port, tiny_model_dir, ray_adapters, tmp_path, monkeypatch
):
    root = tmp_path / "runtime"
    write_random_adapter(tiny_model_dir, root / "late", r=4, seed=901)
    file = tmp_path / "deploy.yaml"
    settings = {
        "model": str(tiny_model_dir),
        "precision": "fp32",
        "adapter_dir": str(ray_adapters),
        "adapter_root": str(root),
        "replicas": REPLICAS,
        "replica_cpus": 0.5,
        "port": port,
        "api_key_env": "H15_RAY_KEY",
        "admin_api_key_env": "H15_RAY_ADMIN",
    }
    file.write_text(yaml.safe_dump(settings))
    monkeypatch.setenv("H15_RAY_KEY", API_KEY)
    monkeypatch.setenv("H15_RAY_ADMIN", ADMIN_KEY)
    deployment = load_deployment(file)
    deploy(deployment.server_spec(), deployment.options(), deployment.host, deployment.port)
    url = f"http://127.0.0.1:{port}"
    assert all("late" not in names for names in models_per_replica(url).values())

    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"name": "late", "path": str(root / "late")}
    r = httpx.post(url + "/v1/adapters", json=body, headers=admin, timeout=120)
    assert r.status_code == 200, r.text
    loaded_by = r.headers[REPLICA_HEADER]
    # Known everywhere at once: a replica asked for its models syncs with the registry first.
    listing = models_per_replica(url)
    assert all("late" in names for names in listing.values()), listing
    answer = greedy(url, "late")
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"]
    assert answer.headers[REPLICA_HEADER] == loaded_by  # affinity: the replica that loaded it serves it

    r = httpx.delete(url + "/v1/adapters/late", headers=admin, timeout=60)
    assert r.status_code == 200, r.text
    time.sleep(SYNC_INTERVAL_S * 2)  # the other replica drops it at its next sync
    assert all("late" not in names for names in models_per_replica(url).values())
    assert greedy(url, "late").status_code == 404
