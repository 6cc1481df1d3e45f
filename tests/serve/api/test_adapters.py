"""/v1/adapters: loading by path needs the admin key or an adapter root; re-registering a name reloads its
weights; a failed load reaches the requests that wait for it (issue 17)."""

import threading
import time

import httpx
import pytest

from tests.serve.api.conftest import ADMIN_KEY, API_KEY, start_server
from tests.serve.api.test_errors import ADMIN, AUTH, assert_error
from tests.serve.conftest import write_random_adapter


def greedy(url, model, headers=AUTH):
    body = {"model": model, "prompt": "The quick brown", "max_tokens": 8, "temperature": 0}
    body["ignore_eos"] = True
    r = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_adapter_changes_need_the_admin_key(live, tiny_model_dir, tmp_path):
    path = write_random_adapter(tiny_model_dir, tmp_path / "a", r=2)
    r = httpx.post(live.url + "/v1/adapters", json={"name": "x", "path": str(path)}, headers=AUTH)
    assert_error(r, 401, code="invalid_api_key")
    assert_error(httpx.post(live.url + "/v1/adapters", json={"name": "ad00"}, headers=AUTH), 401)
    assert_error(httpx.delete(live.url + "/v1/adapters/ad00", headers=AUTH), 401)
    assert "x" not in live.engine.engine.adapters.known()


def test_re_registering_a_name_serves_the_new_weights(live, tiny_model_dir, tmp_path):
    one = write_random_adapter(tiny_model_dir, tmp_path / "one", r=4, seed=21)
    two = write_random_adapter(tiny_model_dir, tmp_path / "two", r=8, seed=22)
    url = live.url + "/v1/adapters"
    assert httpx.post(url, json={"name": "swap", "path": str(one)}, headers=ADMIN).status_code == 200
    first = greedy(live.url, "swap")
    assert httpx.post(url, json={"name": "swap", "path": str(two)}, headers=ADMIN).status_code == 200
    second = greedy(live.url, "swap")
    assert httpx.post(url, json={"name": "fresh-two", "path": str(two)}, headers=ADMIN).status_code == 200
    assert second != first and second == greedy(live.url, "fresh-two")


@pytest.fixture(scope="module")
def outside_and_root(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("roots")
    root = base / "root"
    write_random_adapter(tiny_model_dir, root / "inside", r=2, seed=1)
    write_random_adapter(tiny_model_dir, base / "outside", r=2, seed=2)
    (root / "sneaky").symlink_to(base / "outside", target_is_directory=True)
    return base, root


def test_without_admin_key_or_root_path_loading_is_off(tiny_model_dir, many_adapters_dir, outside_and_root):
    base, root = outside_and_root
    srv = start_server(tiny_model_dir, many_adapters_dir)
    try:
        url = srv.url + "/v1/adapters"
        r = httpx.post(url, json={"name": "x", "path": str(root / "inside")}, headers=AUTH)
        err = assert_error(r, 403, "path", "path_loading_disabled")
        assert "--admin-api-key" in err["message"]
        # Loading a registry adapter by name is not a path load: the serving key may do it.
        r = httpx.post(url, json={"name": "ad03"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["resident"] is True
    finally:
        srv.stop()


def test_an_adapter_root_confines_paths(tiny_model_dir, outside_and_root):
    base, root = outside_and_root
    srv = start_server(tiny_model_dir, None, adapter_root=root)
    try:
        url = srv.url + "/v1/adapters"
        r = httpx.post(url, json={"name": "in", "path": str(root / "inside")}, headers=AUTH)
        assert r.status_code == 200, r.text
        for path in [base / "outside", root / "sneaky", root / ".." / "outside"]:
            r = httpx.post(url, json={"name": "out", "path": str(path)}, headers=AUTH)
            assert_error(r, 403, "path", "path_outside_adapter_root")
        assert greedy(srv.url, "in")
    finally:
        srv.stop()


def test_a_load_failure_seen_by_the_route_reaches_waiting_requests(tiny_model_dir, tmp_path, monkeypatch):
    """Issue 17: the route polls the manager itself; a request waiting for the same adapter used to hang."""
    registry = tmp_path / "registry"
    (registry / "broken").mkdir(parents=True)
    (registry / "broken" / "adapter_config.json").write_text("{}")  # no weights: the load fails
    srv = start_server(tiny_model_dir, registry, admin_api_key=ADMIN_KEY)
    try:
        manager, gate = srv.engine.engine.adapters, threading.Event()
        real = manager._load
        monkeypatch.setattr(manager, "_load", lambda name: (gate.wait(30), real(name))[1])
        results = {}

        def call(key, method, *args, **kw):
            results[key] = getattr(httpx, method)(*args, timeout=30, **kw)

        body = {"model": "broken", "prompt": "x", "max_tokens": 2}
        request = threading.Thread(
            target=call,
            args=("request", "post", srv.url + "/v1/completions"),
            kwargs={"json": body, "headers": AUTH},
        )
        request.start()
        deadline = time.monotonic() + 20
        while not srv.engine.engine.pending:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        route = threading.Thread(
            target=call,
            args=("route", "post", srv.url + "/v1/adapters"),
            kwargs={"json": {"name": "broken"}, "headers": {"Authorization": f"Bearer {ADMIN_KEY}"}},
        )
        route.start()
        time.sleep(0.2)
        gate.set()
        request.join(40)
        route.join(40)
        assert not request.is_alive() and not route.is_alive()
        assert_error(results["route"], 400)
        err = assert_error(results["request"], 400)
        assert "pickles are refused" in err["message"]
    finally:
        gate.set()
        srv.stop()


def test_the_serving_key_still_serves(live):
    assert greedy(live.url, "ad02", headers={"Authorization": f"Bearer {API_KEY}"})
