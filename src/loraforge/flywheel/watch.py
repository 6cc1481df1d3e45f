"""`loraforge flywheel watch`: `run-once` for every policy on an interval, as a long-lived process.

SIGTERM or Ctrl-C stops it after the step in progress (a training step finishes first; killed harder, the
next turner resumes from the step's checkpoint). Turns of one task never overlap, across processes too: each
`run-once` holds the task's lock in the store.
"""

import logging
import signal
import threading
from collections.abc import Callable

from loraforge.errors import LoraforgeError
from loraforge.flywheel.policy import FlywheelPolicy
from loraforge.flywheel.turn import TurnReport, run_once
from loraforge.store.store import Store

log = logging.getLogger("loraforge.flywheel")


def watch(
    store: Store,
    policies: list[FlywheelPolicy],
    interval_s: float,
    echo: Callable[[str], None],
    stop: threading.Event | None = None,
    on_report: Callable[[TurnReport], None] | None = None,
) -> None:
    stop = stop or threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def request_stop(signum, frame) -> None:
        if stop.is_set():  # a second signal: stop now
            raise KeyboardInterrupt
        echo("stopping after the current step (signal again to stop now)")
        stop.set()

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for sig in previous:
            signal.signal(sig, request_stop)
    try:
        while not stop.is_set():
            for policy in policies:
                if stop.is_set():
                    break
                try:
                    report = run_once(store, policy, should_stop=stop.is_set, echo=echo)
                except LoraforgeError as exc:  # e.g. the adapters' server is down: try again next round
                    echo(f"{policy.task}: {exc}")
                    continue
                except Exception:
                    log.exception("flywheel turn of %s failed; retrying next round", policy.task)
                    continue
                echo(f"{report.task}: {report.outcome}: {report.message}")
                if on_report is not None:
                    on_report(report)
            stop.wait(interval_s)
    finally:
        if in_main:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
