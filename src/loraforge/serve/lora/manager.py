"""Adapter manager: find adapters by name, load them in the background, keep an LRU set resident.

The one owner of an adapter's life cycle: known (a name its sources can provide) -> loading (a worker
thread reads it) -> ready (read, waiting for room in the stacks) -> resident (installed at an adapter index,
usable by a batch) -> evicted (least recently used, when no request holds it and room is needed), or failed
(remembered a while). It also holds the requests waiting for an adapter that is not resident yet.

Names: `AdapterSources` (sources.py); failures: `FailedLoads` (failures.py); safetensors only (adapter_file).
"""

import enum
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from loraforge.serve.engine.sequence import Sequence
from loraforge.serve.limits import MAX_ADAPTER_BYTES, MAX_ADAPTERS, ServeLimits
from loraforge.serve.lora.adapter_file import AdapterError, LoadedAdapter, read_adapter
from loraforge.serve.lora.failures import FailedLoads
from loraforge.serve.lora.hub import HubFetcher
from loraforge.serve.lora.sources import AdapterRef, AdapterSources, is_hub_id
from loraforge.serve.lora.weights import LoRAWeights

__all__ = ["AdapterError", "AdapterManager", "AdapterRef", "AdapterState", "LoadedAdapter", "read_adapter"]


class AdapterState(enum.Enum):
    """Where an adapter is in its life cycle (see the module docstring)."""

    KNOWN = "known"
    LOADING = "loading"
    READY = "ready"
    RESIDENT = "resident"
    FAILED = "failed"


@dataclass(frozen=True)
class Resident:
    """An adapter installed in the stacked LoRA weights."""

    index: int  # its adapter index: its place in the stacks (LoRAWeights), 1.. (0 = no adapter)
    nbytes: int  # its own size in the engine's dtype (what it occupies is `adapter_bytes_at` the padded rank)
    modules: frozenset[str]  # the modules it targets (q_proj, ...): the stacks hold only those


class AdapterManager:
    """Tracks known, loading and resident adapters and the requests waiting for them. Loads run on worker
    threads (one for local folders, a few for hub downloads, so a slow download never delays a local load);
    `admit()` (engine thread) installs finished loads into the stacks, evicting least-recently-used adapters
    that no request is using, and hands back the waiting requests whose adapter is now resident or failed.

    Everything a client can make it remember is bounded: loads in flight plus loaded-but-not-installed
    adapters by `max_adapters`, failures by `FailedLoads` (`limits.max_remembered_failures`)."""

    def __init__(
        self,
        weights: LoRAWeights,
        dims: dict[str, int],
        registry_dir: Path | None = None,
        max_adapters: int = MAX_ADAPTERS,
        max_bytes: int = MAX_ADAPTER_BYTES,
        on_ready: Callable[[], None] | None = None,
        limits: ServeLimits | None = None,
        hub: HubFetcher | None = None,
    ):
        self.weights, self.dims = weights, dims
        self.max_adapters, self.max_bytes = min(max_adapters, weights.capacity - 1), max_bytes
        self.on_ready = on_ready or (lambda: None)
        self.limits = limits or ServeLimits()
        self.sources = AdapterSources(registry_dir, self.limits, hub or HubFetcher(self.limits))
        self.resident: OrderedDict[str, Resident] = OrderedDict()  # least recently used first
        self.pinned: set[str] = set()
        self.refs: dict[str, int] = {}
        self.loading: dict[str, Future] = {}
        self.ready: dict[str, LoadedAdapter] = {}  # loaded, waiting for room in the stacks
        self.failed = FailedLoads(self.limits)
        self.pending: list[Sequence] = []  # requests waiting for their adapter to become resident
        self.lock = threading.RLock()
        self.pool = ThreadPoolExecutor(1, "adapter-load")
        self.hub_pool = ThreadPoolExecutor(self.limits.hub_max_downloads, "adapter-hub")

    # ---- names and sources (sources.py) ------------------------------------------------------------
    def register(self, name: str, path: Path) -> None:
        """Make an adapter at an explicit local path available under `name` (a past failure is forgotten)."""
        self.sources.register(name, path)
        self.forget_failure(name)

    def unregister(self, name: str) -> None:
        """Forget the explicit path of `name` (its load failed)."""
        self.sources.unregister(name)

    def locate(self, name: str) -> Path | None:
        """The local folder of adapter `name`, or None when it is a hub id; raises if it cannot exist."""
        return self.sources.locate(name)

    def resolve(self, name: str) -> AdapterRef:
        """Check `name` against the sources once (raises ModelNotFoundError); see `locate`."""
        return AdapterRef(name, self.locate(name) is not None)

    def exists(self, name: str) -> bool:
        return self.sources.exists(name)

    def is_local(self, name: str) -> bool:
        """Whether `name` is an adapter the operator provided (explicit or in the registry), not a hub id."""
        return not is_hub_id(name) and self.exists(name)

    def known(self) -> list[str]:
        """Every name the sources list, and the resident adapters (hub ids included)."""
        with self.lock:
            resident = set(self.resident)
        return sorted(self.sources.names() | resident)

    def state(self, name: str) -> AdapterState:
        """Where `name` is in its life cycle (KNOWN also for an evicted adapter: it loads again when used)."""
        with self.lock:
            if name in self.resident:
                return AdapterState.RESIDENT
            if name in self.ready:
                return AdapterState.READY
            if name in self.loading:
                return AdapterState.LOADING
            return AdapterState.FAILED if self.failure(name) is not None else AdapterState.KNOWN

    def _load(self, name: str) -> LoadedAdapter:
        w = self.weights
        return read_adapter(
            name, self.sources.fetch(name), self.dims, w.num_layers, w.dtype, self.limits.max_adapter_rank
        )

    # ---- failures (failures.py) ------------------------------------------------------------------
    def failure(self, name: str) -> Exception | None:
        """The error of a recent failed load of `name`, while it is remembered."""
        with self.lock:
            return self.failed.error(name)

    def forget_failure(self, name: str) -> None:
        with self.lock:
            self.failed.pop(name, None)

    # ---- residency ---------------------------------------------------------------------------------
    def acquire(self, name: str) -> int | None:
        """Take a reference for one request: the adapter's index if resident, else None (a load is started).

        Raises the remembered error of a recent failed load instead of trying again."""
        with self.lock:
            err = self.failure(name)
            if err is not None:
                raise err.with_traceback(None)
            self.refs[name] = self.refs.get(name, 0) + 1
            if name in self.resident:
                self.resident.move_to_end(name)
                return self.resident[name].index
            self.start_load(name)
            return None

    def wait_for_load(self, timeout: float | None = None) -> None:
        """Block until some running load finishes (offline use, when nothing else can run)."""
        with self.lock:
            futures = list(self.loading.values())
        if futures:
            wait(futures, timeout, return_when=FIRST_COMPLETED)

    def release(self, name: str) -> None:
        with self.lock:
            self.refs[name] -= 1
            if not self.refs[name]:
                del self.refs[name]

    def is_settled(self, name: str) -> bool:
        """Whether `name` is resident, loading, loaded or failed: False means a load must be (re)started."""
        with self.lock:
            return (
                name in self.resident
                or name in self.loading
                or name in self.ready
                or self.failure(name) is not None
            )

    def start_load(self, name: str) -> Future | None:
        """Start loading `name` unless it is already resident or on its way. Returns the load's future, or
        None when there is nothing to wait for (resident, or deferred: `max_adapters` loads are already
        loaded or in flight; the engine starts it again when one of them is installed)."""
        with self.lock:
            if name in self.resident or name in self.loading or name in self.ready:
                return self.loading.get(name)
            if len(self.loading) + len(self.ready) >= self.max_adapters:
                return None
            pool = self.hub_pool if is_hub_id(name) else self.pool
            future = pool.submit(self._load, name)
            self.loading[name] = future
            future.add_done_callback(lambda _: self.on_ready())
            return future

    def park(self, seq: Sequence) -> None:
        """Hold a request (whose reference `acquire` took) until its adapter is resident or has failed."""
        self.pending.append(seq)

    def unpark(self, seq: Sequence) -> None:
        """Forget a waiting request (it was aborted or failed)."""
        if seq in self.pending:
            self.pending.remove(seq)

    def admit(self) -> tuple[list[Sequence], list[tuple[Sequence, Exception]]]:
        """Engine thread: install finished loads, then return the waiting requests that can run now (their
        `adapter_index` set) and those whose adapter failed, with its error. A request whose load was
        deferred or dropped (by an unload) has it started again."""
        if not self.pending:
            return [], []
        fresh = self.install_finished()
        admitted, failed = [], []
        for seq in list(self.pending):
            # From the manager's own record, not from whoever installed the load: the /v1/adapters route
            # installs too, and a failure it saw must still reach these requests.
            if seq.adapter in self.resident:
                self.pending.remove(seq)
                seq.adapter_index = self.resident[seq.adapter].index
                admitted.append(seq)
            elif (err := fresh.get(seq.adapter) or self.failure(seq.adapter)) is not None:
                self.pending.remove(seq)
                failed.append((seq, err))
            elif not self.is_settled(seq.adapter):
                self.start_load(seq.adapter)
        return admitted, failed

    def install_finished(self) -> dict[str, Exception]:
        """Engine thread: install the finished loads that fit (evicting as needed); returns the loads that
        failed now. Failures are also remembered in `failed` (bounded), where the requests waiting for that
        adapter find them whoever called this (`admit`)."""
        failed: dict[str, Exception] = {}
        with self.lock:
            for name, future in list(self.loading.items()):
                if future.done():
                    del self.loading[name]
                    try:
                        self.ready[name] = future.result()
                    except Exception as exc:
                        failed[name] = exc
                        self.failed.remember(name, exc)
            for name in list(self.ready):
                try:
                    index = self._install(self.ready[name])
                except Exception as exc:  # e.g. out of memory growing the stacks: fail this adapter only
                    del self.ready[name]
                    failed[name] = exc
                    self.failed.remember(name, exc)
                    continue
                if index is not None:
                    del self.ready[name]
        return failed

    def _install(self, adapter: LoadedAdapter) -> int | None:
        # Every adapter is padded to the largest rank ever installed, so that is what each one costs.
        rank = max(self.weights.rank, adapter.rank)
        modules = frozenset(module for _, module in adapter.modules)
        each = self.weights.adapter_bytes_at(rank, modules)
        while len(self.resident) >= self.max_adapters or (
            self.resident and self._bytes_at(rank) + each > self.max_bytes
        ):
            if not self._evict_one():
                return None
        used = {r.index for r in self.resident.values()}
        index = next(i for i in range(1, self.weights.capacity) if i not in used)
        self.weights.ensure_rank(adapter.rank, sorted(used))
        self.weights.install(index, adapter.modules)
        self.resident[adapter.name] = Resident(index, adapter.nbytes, modules)
        return index

    def _evict_one(self) -> bool:
        for name in self.resident:  # least recently used first
            if name not in self.pinned and not self.refs.get(name):
                del self.resident[name]
                return True
        return False

    def _bytes_at(self, rank: int) -> int:
        return sum(self.weights.adapter_bytes_at(rank, r.modules) for r in self.resident.values())

    @property
    def resident_bytes(self) -> int:
        """Memory of the resident adapters, each counted at the common (padded) rank."""
        return self._bytes_at(self.weights.rank)

    def pin(self, name: str, pinned: bool = True) -> None:
        with self.lock:
            (self.pinned.add if pinned else self.pinned.discard)(name)

    def unload(self, name: str) -> bool:
        """Drop an adapter from memory and forget its explicit path; False while requests still use it."""
        with self.lock:
            if self.refs.get(name):
                return False
            self.resident.pop(name, None)
            self.ready.pop(name, None)
            self.loading.pop(name, None)  # a load in flight would install what may be stale weights
            self.pinned.discard(name)
            self.sources.unregister(name)
            self.failed.pop(name, None)
            return True

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.hub_pool.shutdown(wait=False, cancel_futures=True)
