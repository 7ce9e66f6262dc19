"""Spreading the per-relation checks of one database over several connections.

A cluster's audit gets a budget of connection slots (`Slots`: at most `--jobs`, and at most a
quarter of the server's free connections). Each database being checked holds one slot for its own
connection; its checks are `Task`s, run biggest first, by its own thread and by helper threads that
open their own read-only sessions while slots are free. A helper that cannot connect just leaves its
share to the others; one whose session dies reports that its database was not checked to the end.

A task may need others done first (`needs`): a table's rows are read, and its indexes checked
against it (`heapallindexed`), only after `verify_heapam` checked it, so that nothing reads the rows of
a table already found damaged (a damaged row can crash the server when read). What a task decides
from another's result is therefore the same on every run.

The order of the report does not depend on which connection finished first: every task carries its
place in the checks' sequential order (`rank`), and `DatabaseReport` keeps the finding of the earliest
rank when two checks see the same damage, and sorts the findings.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import psycopg

from fsaudit_checks.postgres.report import DatabaseLost, ServerRestarted
from fsaudit_checks.postgres.session import connect

# The checks' sequential order: files against the catalog, the commit log, heaps, indexes, sequences,
# files again, rows, permissions.
(
    PHASE_FILES,
    PHASE_COMMIT_LOG,
    PHASE_HEAPS,
    PHASE_INDEXES,
    PHASE_SEQUENCES,
    PHASE_RECHECK,
    PHASE_ROWS,
    PHASE_DENIED,
) = range(8)


class Slots:
    """At most `limit` sessions of one cluster's audit at once."""

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self.used = 0
        self.changed = threading.Condition()

    def take(self) -> None:
        with self.changed:
            while self.used >= self.limit:
                self.changed.wait()
            self.used += 1

    def take_while(self, needed: Callable[[], bool]) -> bool:
        """Take a slot as soon as one is free, unless `needed()` turns false first (then False)."""
        with self.changed:
            while needed():
                if self.used < self.limit:
                    self.used += 1
                    return True
                self.changed.wait(0.05)
            return False

    def give(self) -> None:
        with self.changed:
            self.used -= 1
            self.changed.notify()


@dataclass(order=True)
class Task:
    """One statement or a few on one connection: `cost` is about the bytes it reads, `phase` and
    `rank` its place in the sequential order, `needs` the tasks that must be done before it."""

    cost: int
    phase: int
    rank: int
    work: Callable[[], None] = field(compare=False)
    needs: List[Task] = field(default_factory=list, compare=False)
    done: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)


def _weights(tasks: List[Task]) -> dict:
    """Each task's cost plus that of its costliest follower: a table whose index check is the
    longest task starts first, so that its check is not the last to begin."""
    following: dict = {}
    for task in tasks:
        for need in task.needs:
            following[id(need)] = max(following.get(id(need), 0), task.cost)
    return {id(task): task.cost + following.get(id(task), 0) for task in tasks}


def run_tasks(audit, tasks: List[Task]) -> None:
    """Run `tasks` on `audit`'s connection (this thread) and on helper connections as soon as slots
    are free, the costliest first (each once the tasks it needs are done), so that the biggest
    relation does not start last. Returns when all are done, or when the server restarted; a lost
    session of this thread is raised (`DatabaseLost`) after the helpers ended."""
    known = {id(task) for task in tasks}
    for task in tasks:  # a task that is not run here is no reason to wait
        task.needs = [need for need in task.needs if id(need) in known]
    weight = _weights(tasks)
    pending = sorted(tasks, key=lambda task: (-weight[id(task)], task.phase, task.rank))
    changed = threading.Condition()

    def next_task() -> Optional[Task]:
        with changed:
            while pending and not audit.watch.restarted.is_set():
                for index, task in enumerate(pending):
                    if all(need.done.is_set() for need in task.needs):
                        return pending.pop(index)
                changed.wait(0.1)
            return None

    def work() -> None:
        while True:
            task = next_task()
            if task is None:
                return
            audit.rank = (task.phase, task.rank)
            try:
                task.work()
            finally:
                task.done.set()
                with changed:
                    changed.notify_all()

    def helper() -> None:
        if not audit.slots.take_while(lambda: bool(pending) and not audit.watch.restarted.is_set()):
            return
        try:
            try:
                audit.conn = connect(audit.conninfo, audit.dbname, audit.settings)
            except psycopg.Error:
                audit.count("helper_connections_failed")
                return
            try:
                work()
            except ServerRestarted:
                pass  # the cluster's audit says so, once
            except DatabaseLost as lost:
                audit.incomplete(f"database {audit.dbname}: a connection was lost ({lost})")
            except Exception as error:  # one failed helper never stops the others
                audit.incomplete(
                    f"database {audit.dbname}: the check failed: {type(error).__name__}: {error}"
                )
            finally:
                audit.conn.close()
        finally:
            audit.slots.give()

    helpers = [
        threading.Thread(target=helper, name=f"fsaudit-pg-{audit.dbname}", daemon=True)
        for _ in range(min(audit.slots.limit, len(pending)) - 1)
    ]
    for thread in helpers:
        thread.start()
    try:
        work()
    finally:
        for thread in helpers:
            thread.join()
