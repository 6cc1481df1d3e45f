"""The flywheel's records in the store: its turns (`flywheel_runs`) and the per-task lock that keeps two
turners (two `flywheel watch` processes, or a watcher and a person's `run-once`) from racing."""

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from loraforge.store.store import Store
from loraforge.store.tables import FlywheelLock, FlywheelRun, utcnow

RUNNING, DONE, STOPPED, ROLLED_BACK = "running", "done", "stopped", "rolled_back"


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def try_lock(store: Store, task: str, owner: str, lease_s: float) -> bool:
    """Take the task's lock when it is free or its holder's lease ran out (a crashed holder)."""
    now = utcnow()
    expires = now + timedelta(seconds=lease_s)
    with Session(store.db) as session, session.begin():
        taken = session.execute(
            update(FlywheelLock)
            .where(FlywheelLock.task == task, (FlywheelLock.expires < now) | (FlywheelLock.owner == owner))
            .values(owner=owner, expires=expires)
        ).rowcount
    if taken:
        return True
    try:
        with Session(store.db) as session, session.begin():
            session.add(FlywheelLock(task=task, owner=owner, expires=expires))
        return True
    except IntegrityError:  # held by a live owner
        return False


def renew_lock(store: Store, task: str, owner: str, lease_s: float) -> bool:
    with Session(store.db) as session, session.begin():
        return bool(
            session.execute(
                update(FlywheelLock)
                .where(FlywheelLock.task == task, FlywheelLock.owner == owner)
                .values(expires=utcnow() + timedelta(seconds=lease_s))
            ).rowcount
        )


def release_lock(store: Store, task: str, owner: str) -> None:
    with Session(store.db) as session, session.begin():
        session.execute(delete(FlywheelLock).where(FlywheelLock.task == task, FlywheelLock.owner == owner))


@contextmanager
def task_lock(store: Store, task: str, lease_s: float) -> Iterator[bool]:
    """Hold the task's lock for the block (yields False, holding nothing, when another owner has it). A
    thread renews the lease every third of it, so a long training step keeps the lock while a killed
    process's lock frees itself within one lease."""
    owner = new_owner()
    if not try_lock(store, task, owner, lease_s):
        yield False
        return
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            with contextlib.suppress(Exception):  # the store is down a moment: the next renewal retries
                renew_lock(store, task, owner, lease_s)

    renewer = threading.Thread(target=renew, name=f"flywheel-lock-{task}", daemon=True)
    renewer.start()
    try:
        yield True
    finally:
        stop.set()
        renewer.join()
        release_lock(store, task, owner)


def start_run(store: Store, task: str, step: str) -> FlywheelRun:
    run = FlywheelRun(task=task, step=step, status=RUNNING, events=[])
    with Session(store.db, expire_on_commit=False) as session, session.begin():
        session.add(run)
    return run


def update_run(store: Store, run: FlywheelRun, message: str | None = None, **fields: Any) -> FlywheelRun:
    """Set fields of the run (and log `message` as an event of its current step), in one transaction."""
    now = utcnow()
    with Session(store.db, expire_on_commit=False) as session, session.begin():
        row = session.get(FlywheelRun, run.id)
        if message is not None:  # logged under the step that did the work, before `fields` move it on
            event = {"time": now.isoformat(timespec="seconds"), "step": row.step, "message": message}
            row.events = [*(row.events or []), event]
        for key, value in fields.items():
            setattr(row, key, value)
        row.updated = now
    return row


def active_run(store: Store, task: str) -> FlywheelRun | None:
    """The task's unfinished turn, if any (at most one: only the lock holder starts turns)."""
    query = (
        select(FlywheelRun)
        .where(FlywheelRun.task == task, FlywheelRun.status == RUNNING)
        .order_by(FlywheelRun.id.desc())
    )
    with Session(store.db, expire_on_commit=False) as session:
        return session.scalars(query).first()


def list_runs(store: Store, task: str | None = None, limit: int | None = None) -> list[FlywheelRun]:
    query = select(FlywheelRun).order_by(FlywheelRun.id.desc())
    if task is not None:
        query = query.where(FlywheelRun.task == task)
    if limit is not None:
        query = query.limit(limit)
    with Session(store.db, expire_on_commit=False) as session:
        return list(session.scalars(query))


def get_run(store: Store, run_id: int) -> FlywheelRun | None:
    with Session(store.db, expire_on_commit=False) as session:
        return session.get(FlywheelRun, run_id)


def runs_on_dataset(store: Store, task: str, name: str, version: int) -> list[FlywheelRun]:
    query = select(FlywheelRun).where(
        FlywheelRun.task == task, FlywheelRun.dataset_name == name, FlywheelRun.dataset_version == version
    )
    with Session(store.db, expire_on_commit=False) as session:
        return list(session.scalars(query))
