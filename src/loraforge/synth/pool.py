"""Bounded concurrency: up to C teacher requests in flight, each result handed to one sequential handler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


async def run_bounded(
    jobs: Iterator[Callable[[], Awaitable[T]]],
    concurrency: int,
    handle: Callable[[T], None],
    may_launch: Callable[[int], bool] = lambda in_flight: True,
) -> None:
    """Run jobs, at most `concurrency` in flight; `handle` sees results one at a time, in completion order.

    `may_launch(in_flight)` is asked before each new job, so a caller that already has enough can stop early.
    After the first job exception no new job starts, but the jobs in flight are awaited and their results
    handled (their answers are already paid for); then that first exception is re-raised.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    pending: set[asyncio.Task[T]] = set()
    failure: BaseException | None = None
    try:
        while True:
            while failure is None and len(pending) < concurrency and may_launch(len(pending)):
                job = next(jobs, None)
                if job is None:
                    break
                pending.add(asyncio.ensure_future(job()))
            if not pending:
                break
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is None:
                    handle(task.result())
                elif failure is None:
                    failure = task.exception()
    finally:
        for task in pending:  # only on cancellation (Ctrl-C) or a failing handler
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    if failure is not None:
        raise failure
