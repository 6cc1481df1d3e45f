"""A small thread-safe cache with expiry, for figures the pages may show a little late (see each use).

An expired entry is still answered while one background thread loads its replacement (stale while
revalidate): after the first load, no page waits for a slow query again.
"""

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger("loraforge.ui")


class TTLCache:
    def __init__(self) -> None:
        self._items: dict[Hashable, tuple[float, Any]] = {}
        self._refreshing: set[Hashable] = set()
        self._lock = threading.Lock()

    def get_or_load(self, key: Hashable, ttl_s: float, load: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            stale = hit is not None and hit[0] < now
            if stale and key not in self._refreshing:
                self._refreshing.add(key)
                threading.Thread(target=self._refresh, args=(key, ttl_s, load), daemon=True).start()
        if hit is not None:
            return hit[1]
        value = load()  # outside the lock: a slow query must not hold up other keys
        self._put(key, ttl_s, value)
        return value

    def _refresh(self, key: Hashable, ttl_s: float, load: Callable[[], Any]) -> None:
        try:
            self._put(key, ttl_s, load())
        except Exception as exc:  # the store is down: keep answering the old figures, say why once
            log.warning("dashboard: refreshing %s failed: %s", key[0] if isinstance(key, tuple) else key, exc)
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def _put(self, key: Hashable, ttl_s: float, value: Any) -> None:
        now = time.monotonic()
        with self._lock:
            # Entries far past their expiry (a day that left the window, a closed store) are dropped.
            for old in [k for k, (expires, _) in self._items.items() if expires + 10 * ttl_s < now]:
                del self._items[old]
            self._items[key] = (now + ttl_s, value)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# Figures of the tasks page; `clear()` forgets them (tests, benchmarks, a store changed behind our back).
CACHE = TTLCache()
