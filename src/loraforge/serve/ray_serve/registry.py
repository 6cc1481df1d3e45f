"""Adapters registered at run time (`POST /v1/adapters` with a path), shared by every replica.

A `POST /v1/adapters` reaches one replica, which checks it (keys, `--adapter-root`, the files) and loads the
adapter; once it answered 200, it records the adapter here, a named Ray actor, and a `DELETE` removes it.
Every replica follows the record (`ReplicaAdapters.sync`): before loading an adapter it does not know, and
every SYNC_INTERVAL_S in the background, it registers the new names (so `/v1/models` lists them
everywhere), drops the deleted ones and re-registers the moved ones. A replica started later (autoscaling)
catches up the same way. The paths must be readable on every node, like `--adapter-dir`.
"""

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import ray

from loraforge.serve.ray_serve.options import APP_NAME

NAMESPACE = "loraforge"
REGISTRY_NAME = f"{APP_NAME}-adapters"
SYNC_INTERVAL_S = 2.0  # how soon a replica that did not take the request sees a deletion or a move
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    path: str
    pinned: bool = False


@ray.remote(num_cpus=0)
class AdapterRegistry:
    """name -> Entry, with a version that changes on every change (replicas poll it cheaply)."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.version = 0

    def put(self, name: str, entry: Entry) -> int:
        self.entries[name] = entry
        self.version += 1
        return self.version

    def remove(self, name: str) -> int:
        if self.entries.pop(name, None) is not None:
            self.version += 1
        return self.version

    def changes(self, since: int) -> tuple[int, dict[str, Entry] | None]:
        """(version, every entry) when something changed after `since`, else (version, None)."""
        return self.version, (dict(self.entries) if self.version != since else None)


def registry():
    """The application's registry (created by the first caller: `deploy` makes a fresh one)."""
    return AdapterRegistry.options(
        name=REGISTRY_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()


def drop_registry() -> None:
    """Remove the registry (a new deployment starts with none; a stopped one leaves none behind)."""
    with contextlib.suppress(ValueError):  # there was none
        ray.kill(ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE))


class ReplicaAdapters:
    """One replica's view of the registry: what it adopted from it, and the version it has seen."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.registry = registry()
        self.adopted: dict[str, Entry] = {}
        self.version = 0
        self.lock = asyncio.Lock()

    async def record(self, name: str, path: str, pinned: bool) -> None:
        """This replica loaded `name` from `path` for a client: tell every replica."""
        entry = Entry(str(Path(path).expanduser().resolve()), pinned)
        self.adopted[name] = entry
        await self._call("put", name, entry)

    async def forget(self, name: str) -> None:
        """A client deleted `name` here: every replica drops it."""
        self.adopted.pop(name, None)
        await self._call("remove", name)

    async def _call(self, method: str, *args):
        """A registry call that never fails a request: a registry replaced by a new deployment (or gone)
        is looked up again, and the call retried once."""
        for _ in range(2):
            try:
                return await getattr(self.registry, method).remote(*args)
            except ray.exceptions.RayActorError as exc:
                log.warning("adapter registry unreachable (%s); looking it up again", exc)
                self.registry = registry()
        return None

    def pinned(self, name: str) -> bool:
        entry = self.adopted.get(name)
        return entry is not None and entry.pinned

    async def sync(self) -> None:
        """Follow the registry's changes since the last sync (one actor call when there are none)."""
        async with self.lock:
            changes = await self._call("changes", self.version)
            if changes is None or changes[1] is None:
                return
            version, entries = changes
            done = True
            for name, entry in entries.items():
                if self.adopted.get(name) != entry:
                    done &= await self._adopt(name, entry)
            for name in [n for n in self.adopted if n not in entries]:
                done &= await self._drop(name)
            if done:  # else the next sync tries what failed again
                self.version = version

    async def _adopt(self, name: str, entry: Entry) -> bool:
        try:
            if name in self.adopted:  # moved: drop the old weights (in use: try again next sync)
                await self.engine.prepare_adapter(name, Path(entry.path))
            else:
                self.engine.register_adapter(name, Path(entry.path))
        except Exception as exc:  # noqa: BLE001 - not readable here, or in use: the next sync retries
            log.warning("adapter %s from the shared registry: %s", name, exc)
            return False
        self.adopted[name] = entry
        return True

    async def _drop(self, name: str) -> bool:
        try:
            await self.engine.unload_adapter(name)
        except Exception as exc:  # noqa: BLE001 - still in use: the next sync retries
            log.warning("adapter %s deleted from the shared registry, still in use here: %s", name, exc)
            return False
        del self.adopted[name]
        return True

    async def follow(self) -> None:
        """The background loop: sync every SYNC_INTERVAL_S until cancelled."""
        while True:
            await self.sync()
            await asyncio.sleep(SYNC_INTERVAL_S)
