# SPDX-License-Identifier: MIT
"""Jobs without a bus: start, progress, end, limits; and the records'
D-Bus form."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nexusd.dbus import jobs as jobs_module
from nexusd.dbus.jobs import Job, JobContext, JobManager, find_operation
from nexusd.errors import Busy, NotFound, QuotaExceeded, Unavailable


def context() -> JobContext:
    return JobContext(
        job_id="", untrusted_options={}, actor="uid:0/:1.1", via="dbus:X"
    )


class Recorder:
    def __init__(self) -> None:
        self.progress: list[tuple[str, float, str]] = []
        self.finished: list[Job] = []
        self.done = asyncio.Event()

    def on_progress(self, job: Job) -> None:
        self.progress.append((job.id, job.fraction, job.message))

    def on_finished(self, job: Job) -> None:
        self.finished.append(job)
        self.done.set()

    def manager(self) -> JobManager:
        return JobManager(self.on_progress, self.on_finished)


class TestJobManager:
    async def test_result_and_end_reported(self) -> None:
        """If an operation returns, the job is done with its result and the
        end is reported once."""
        seen = Recorder()

        async def op(ctx: JobContext) -> dict[str, Any]:
            return {"id": ctx.job_id}

        job = seen.manager().start("Apply", op, context())
        await asyncio.wait_for(seen.done.wait(), 5)

        assert (job.state, job.result, job.fraction) == (
            "done",
            {"id": job.id},
            1.0,
        )
        assert seen.finished == [job]

    async def test_result_made_json_ready(self, tmp_path) -> None:
        """If an operation returns a value JSON lacks (a path), the result
        holds its text, so it can go on the bus."""
        seen = Recorder()

        async def op(ctx: JobContext) -> dict[str, Any]:
            return {"image": tmp_path, "sizes": (1, 2)}

        job = seen.manager().start("ImportTemplate", op, context())
        await asyncio.wait_for(seen.done.wait(), 5)

        assert job.result == {"image": str(tmp_path), "sizes": [1, 2]}

    async def test_nexus_error_fails_with_code(self) -> None:
        """If an operation raises a nexusd error, the job fails with the
        error's code and message."""
        seen = Recorder()

        async def op(ctx: JobContext) -> dict[str, Any]:
            raise QuotaExceeded("too many qubes")

        job = seen.manager().start("CreateQube", op, context())
        await asyncio.wait_for(seen.done.wait(), 5)

        assert (job.state, job.error_code, job.error_message) == (
            "failed",
            "quota_exceeded",
            "too many qubes",
        )

    async def test_crash_hides_details(self) -> None:
        """If an operation crashes, the job fails as internal_error without
        the exception's text."""
        seen = Recorder()

        async def op(ctx: JobContext) -> dict[str, Any]:
            raise KeyError("secret detail")

        job = seen.manager().start("Apply", op, context())
        await asyncio.wait_for(seen.done.wait(), 5)

        assert job.error_code == "internal_error"
        assert "secret" not in job.error_message

    async def test_progress_throttled_but_final_kept(self) -> None:
        """If an operation reports progress in a tight loop, few reports
        pass, and the 100 % report always does."""
        seen = Recorder()

        async def op(ctx: JobContext) -> dict[str, Any]:
            for step in range(1000):
                ctx.progress(step / 1000, "copying")
            ctx.progress(1.0, "copying")
            return {}

        seen.manager().start("ImportTemplate", op, context())
        await asyncio.wait_for(seen.done.wait(), 5)

        assert len(seen.progress) < 10
        assert seen.progress[-1][1:] == (1.0, "copying")

    async def test_running_limit_refuses_more(self) -> None:
        """If the limit of running jobs is reached, the next is refused as
        busy and not remembered."""
        manager = JobManager()
        gate = asyncio.Event()

        async def op(ctx: JobContext) -> dict[str, Any]:
            await gate.wait()
            return {}

        for _ in range(jobs_module.MAX_RUNNING):
            manager.start("Apply", op, context())

        with pytest.raises(Busy) as caught:
            manager.start("Apply", op, context())

        assert caught.value.code == "busy"
        assert len(manager.list()) == jobs_module.MAX_RUNNING
        gate.set()
        await manager.close()

    async def test_finished_jobs_forgotten_beyond_cap(
        self, monkeypatch
    ) -> None:
        """If more jobs finish than are kept, the oldest are forgotten."""
        monkeypatch.setattr(jobs_module, "MAX_FINISHED", 2)
        manager = JobManager()

        async def op(ctx: JobContext) -> dict[str, Any]:
            return {}

        started = [manager.start("Diff", op, context()) for _ in range(4)]
        await asyncio.gather(*(job.task for job in started))

        assert [j.id for j in manager.list()] == [started[2].id, started[3].id]
        with pytest.raises(NotFound):
            manager.get(started[0].id)

    async def test_cancel_ends_cancelled(self) -> None:
        """If a running job is cancelled, it ends as cancelled."""
        seen = Recorder()

        async def op(ctx: JobContext) -> dict[str, Any]:
            await asyncio.sleep(30)
            return {}

        manager = seen.manager()
        job = manager.start("Apply", op, context())
        await asyncio.sleep(0)
        manager.cancel(job.id)
        await asyncio.wait_for(seen.done.wait(), 5)

        assert job.state == "cancelled"

    async def test_cancel_before_start_still_ends(self) -> None:
        """If a job is cancelled before it ran at all, it still ends as
        cancelled and its end is reported."""
        seen = Recorder()
        ran: list[bool] = []

        async def op(ctx: JobContext) -> dict[str, Any]:
            ran.append(True)
            return {}

        manager = seen.manager()
        job = manager.start("Apply", op, context())
        manager.cancel(job.id)
        await asyncio.wait_for(seen.done.wait(), 5)

        assert (job.state, ran, seen.finished) == ("cancelled", [], [job])


class TestFindOperation:
    def test_missing_registry_not_available(self) -> None:
        """If the daemon has no operations at all, the error says the
        operation is not available."""
        with pytest.raises(Unavailable) as caught:
            find_operation(object(), "Apply")

        assert caught.value.message == "Apply is not available in this nexusd"


class TestVariants:
    def test_none_left_out_and_types_kept(self) -> None:
        """If a record has None values, they are left out; other values
        keep their D-Bus types."""
        from nexusd.dbus.variants import record

        found = record({"a": None, "b": 1, "c": [1, None], "d": {"e": "x"}})

        assert sorted(found) == ["b", "c", "d"]
        assert found["b"].get_type_string() == "x"
        assert found["c"].unpack() == [1]
        assert found["d"].unpack() == {"e": "x"}

    def test_out_of_range_int_refused(self) -> None:
        """If an int does not fit int64, it is refused, not wrapped."""
        from nexusd.dbus.variants import to_variant

        with pytest.raises(TypeError):
            to_variant(2**63)
