"""Fault injection for store tests: a method of a live object that hangs until released."""

import threading


def stall(obj: object, method: str, timeout: float = 60) -> tuple[threading.Event, threading.Event]:
    """Make `obj.method` block until `release` is set, then run; `entered` is set once a call blocks.

    Returns (release, entered). Stands in for a database that stops answering (a held lock, a dead link).
    """
    release, entered = threading.Event(), threading.Event()
    original = getattr(obj, method)

    def stalled(*args, **kwargs):
        entered.set()
        release.wait(timeout)
        return original(*args, **kwargs)

    setattr(obj, method, stalled)
    return release, entered
