"""A small thread-safe cache with expiry, for figures the pages may show a little late (see each use)."""

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any


class TTLCache:
    def __init__(self) -> None:
        self._items: dict[Hashable, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get_or_load(self, key: Hashable, ttl_s: float, load: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and hit[0] >= now:
            return hit[1]
        value = load()  # outside the lock: a slow query must not hold up other keys
        with self._lock:
            for stale in [k for k, (expires, _) in self._items.items() if expires < now]:
                del self._items[stale]
            self._items[key] = (now + ttl_s, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# Figures of the tasks page; `clear()` forgets them (tests, benchmarks, a store changed behind our back).
CACHE = TTLCache()
