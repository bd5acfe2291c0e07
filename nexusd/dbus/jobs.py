# SPDX-License-Identifier: MIT
"""Long operations run as jobs: started at once, reported as they go.

An operation is an async callable registered on the daemon (``Daemon.
operations``, name to callable); it gets a :class:`JobContext` and returns a
JSON-ready dict. A job's progress and end reach every listener (the D-Bus
signals); finished jobs are remembered for a while so a late client can
still ask how one ended. This module imports no GLib.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import structlog

from nexusd.errors import Busy, NexusError, NotFound, Unavailable

__all__ = [
    "Job",
    "JobContext",
    "JobManager",
    "Operation",
    "find_operation",
    "image_from_fd",
]

log = structlog.get_logger()

#: Jobs that may run at once; more are refused as busy.
MAX_RUNNING = 8
#: Finished jobs remembered for GetJob.
MAX_FINISHED = 64
#: Progress is passed on at most this often, unless it reached 100 % or the
#: message changed (a fast loop must not flood the bus).
PROGRESS_INTERVAL = 0.2


@dataclass
class JobContext:
    """What an operation gets.

    Attributes:
        job_id: the job's id.
        untrusted_options: the caller's options, to be parsed by the
            operation (``a{sv}`` unpacked: str, int, float, bool, lists,
            dicts).
        actor: who asked, for the audit trail (``uid:0/:1.42``).
        via: the channel, for the audit trail (``dbus:ImportTemplate``).
        image: a file the caller passed (template import), else None; the
            job closes it when the operation returns.
    """

    job_id: str
    untrusted_options: dict[str, Any]
    actor: str
    via: str
    image: BinaryIO | None = None
    _report: Callable[[float, str], None] | None = field(
        default=None, repr=False
    )

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress: *fraction* from 0 to 1, or -1 when unknown."""
        if self._report is not None:
            self._report(fraction, message)


#: The signature of every operation in ``Daemon.operations``.
Operation = Callable[[JobContext], Awaitable[dict[str, Any]]]


def find_operation(daemon: object, name: str) -> Operation:
    """The operation *name* registered on *daemon*.

    Raises:
        Unavailable: this nexusd has no such operation.
    """
    registry = getattr(daemon, "operations", None)
    operation = None
    if isinstance(registry, Mapping):
        operation = registry.get(name)
    if operation is None:
        msg = f"{name} is not available in this nexusd"
        raise Unavailable(msg)
    return operation  # type: ignore[no-any-return]


@dataclass
class Job:
    """One run of an operation."""

    id: str
    kind: str
    actor: str
    state: str = "running"
    fraction: float = 0.0
    message: str = ""
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error_code: str = ""
    error_message: str = ""
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    _last_report: float = field(default=0.0, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The job as JSON-ready values."""
        return {
            "id": self.id,
            "kind": self.kind,
            "actor": self.actor,
            "state": self.state,
            "fraction": self.fraction,
            "message": self.message,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error_code": self.error_code or None,
            "error_message": self.error_message or None,
        }


ProgressHook = Callable[[Job], None]
FinishedHook = Callable[[Job], None]


class JobManager:
    """Starts, tracks, cancels jobs; tells listeners of progress and end."""

    def __init__(
        self,
        on_progress: ProgressHook | None = None,
        on_finished: FinishedHook | None = None,
    ) -> None:
        """Call *on_progress*/*on_finished* on the event loop's thread."""
        self._on_progress = on_progress
        self._on_finished = on_finished
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._ids = itertools.count(1)

    def running(self) -> list[Job]:
        """Jobs not yet finished."""
        return [j for j in self._jobs.values() if j.state == "running"]

    def list(self) -> list[Job]:
        """Every remembered job, oldest first."""
        return list(self._jobs.values())

    def get(self, job_id: str) -> Job:
        """The job *job_id*.

        Raises:
            NotFound: no such job (or it was forgotten).
        """
        job = self._jobs.get(job_id)
        if job is None:
            msg = f"no job {job_id[:32]!r}"
            raise NotFound(msg)
        return job

    def start(
        self,
        kind: str,
        operation: Operation,
        context: JobContext,
    ) -> Job:
        """Run *operation* as a new job; return it at once.

        The job's id is set into *context*.

        Raises:
            Busy: too many jobs are running.
        """
        if len(self.running()) >= MAX_RUNNING:
            if context.image is not None:
                context.image.close()
            msg = f"{MAX_RUNNING} jobs are running; try again later"
            raise Busy(msg)
        job = Job(id=f"job-{next(self._ids)}", kind=kind, actor=context.actor)
        context.job_id = job.id
        context._report = lambda f, m: self._progress(job, f, m)
        self._jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job, operation, context))
        # A task cancelled before its first step never enters _run's try.
        job.task.add_done_callback(lambda _: self._ended(job, context))
        log.info("job_started", job=job.id, kind=kind, actor=context.actor)
        return job

    def cancel(self, job_id: str) -> Job:
        """Ask job *job_id* to stop; it ends as ``cancelled``.

        Raises:
            NotFound: no such job.
        """
        job = self.get(job_id)
        if job.state == "running" and job.task is not None:
            job.task.cancel()
        return job

    async def close(self) -> None:
        """Cancel every running job and wait for them."""
        tasks = [j.task for j in self.running() if j.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _progress(self, job: Job, fraction: float, message: str) -> None:
        if job.state != "running":
            return
        fraction = -1.0 if fraction < 0 else min(float(fraction), 1.0)
        now = time.monotonic()
        due = (
            now - job._last_report >= PROGRESS_INTERVAL
            or fraction >= 1.0
            or message != job.message
        )
        job.fraction, job.message = fraction, message
        if due:
            job._last_report = now
            _tell(self._on_progress, job)

    async def _run(
        self, job: Job, operation: Operation, context: JobContext
    ) -> None:
        try:
            result = await operation(context)
        except asyncio.CancelledError:
            job.state = "cancelled"
        except NexusError as err:
            job.state = "failed"
            job.error_code, job.error_message = err.code, err.message
        except Exception:
            log.exception("job_crashed", job=job.id, kind=job.kind)
            job.state = "failed"
            job.error_code = "internal_error"
            job.error_message = "the job failed; see nexusd's journal"
        else:
            job.state = "done"
            job.result = _json_ready(result)
            job.fraction = 1.0
        self._ended(job, context)

    def _ended(self, job: Job, context: JobContext) -> None:
        if job.finished_at is not None:
            return
        if job.state == "running":
            job.state = "cancelled"
        if context.image is not None:
            with contextlib.suppress(OSError):
                context.image.close()
        job.finished_at = time.time()
        log.info(
            "job_finished",
            job=job.id,
            kind=job.kind,
            state=job.state,
            error=job.error_code or None,
        )
        self._forget_old()
        _tell(self._on_finished, job)

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.state != "running"]
        for job in finished[: max(0, len(finished) - MAX_FINISHED)]:
            del self._jobs[job.id]


def _json_ready(result: object) -> dict[str, Any]:
    """*result* as plain JSON values (a Path becomes its text)."""
    if not isinstance(result, dict):
        return {}
    return dict(json.loads(json.dumps(result, default=str)))


def _tell(hook: Callable[[Job], None] | None, job: Job) -> None:
    if hook is None:
        return
    try:
        hook(job)
    except Exception:
        log.exception("job_listener_failed", job=job.id)


def image_from_fd(fd: int) -> BinaryIO:
    """A binary reader over a descriptor passed by a caller (owned)."""
    return os.fdopen(fd, "rb")
