"""The dashboard's expiring cache answers an expired entry at once and replaces it in the background."""

import threading
import time

from loraforge.ui.queries.cache import TTLCache


def test_expired_entries_are_answered_while_one_refresh_runs():
    cache, calls, release = TTLCache(), [], threading.Event()

    def load():
        calls.append(1)
        if len(calls) > 1:
            release.wait(5)  # a slow query
        return len(calls)

    assert cache.get_or_load("k", 0.01, load) == 1
    time.sleep(0.02)
    started = time.monotonic()
    assert [cache.get_or_load("k", 0.01, load) for _ in range(3)] == [1, 1, 1]  # stale, not waiting
    assert time.monotonic() - started < 1 and len(calls) == 2  # one refresh, not three
    release.set()
    deadline = time.monotonic() + 5  # the refreshed value arrives (and, expiring fast, refreshes again)
    while cache.get_or_load("k", 60, load) == 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.get_or_load("k", 60, load) >= 2


def test_a_failed_refresh_keeps_the_old_value():
    cache = TTLCache()
    assert cache.get_or_load("k", 0.01, lambda: "old") == "old"
    time.sleep(0.02)

    def broken():
        raise RuntimeError("store down")

    assert cache.get_or_load("k", 0.01, broken) == "old"
    time.sleep(0.1)
    assert cache.get_or_load("k", 60, broken) == "old"
