# SPDX-License-Identifier: MIT
"""The admin.Events follower: backoff, reconnect markers, what ends it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from nexusd.qubes import CONNECTION_ESTABLISHED, DaemonUnavailable, Event
from nexusd.qubes.events import Backoff, follow_events

#: Guard against a hang; never an assertion on speed.
GUARD = 10
TINY = Backoff(first=0.01, cap=0.04, jitter=0)
MARKER = Event(None, CONNECTION_ESTABLISHED, {})


class Script:
    """A connect function: each call plays the next scripted connection.

    An entry is a list of events to yield, then an exception to raise (or
    ``None`` to end the stream cleanly).
    """

    def __init__(
        self, plays: list[tuple[list[Event], BaseException | None]]
    ) -> None:
        self.plays = plays
        self.calls = 0
        self.closed = 0

    async def __call__(self) -> AsyncIterator[Event]:
        events, error = self.plays[min(self.calls, len(self.plays) - 1)]
        self.calls += 1
        try:
            for event in events:
                yield event
            if error is not None:
                raise error
        finally:
            self.closed += 1


async def _take(stream: AsyncIterator[Event], count: int) -> list[Event]:
    return [await asyncio.wait_for(anext(stream), GUARD) for _ in range(count)]


class TestBackoff:
    def test_doubles_up_to_the_cap(self) -> None:
        """If attempts go on, the wait doubles from the first to the cap."""
        backoff = Backoff(first=1.0, cap=30.0, jitter=0)

        delays = [backoff.delay(n) for n in range(7)]

        assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]

    def test_huge_attempt_stays_at_the_cap(self) -> None:
        """If the attempt count is huge, the wait is the cap, no overflow."""
        backoff = Backoff(first=1.0, cap=30.0, jitter=0)

        assert backoff.delay(10**6) == 30.0

    def test_jitter_adds_at_most_its_fraction(self) -> None:
        """If jitter is on, each wait lies between base and base+fraction."""
        backoff = Backoff(first=2.0, cap=30.0, jitter=0.5)

        delays = [backoff.delay(0) for _ in range(50)]

        assert all(2.0 <= d <= 3.0 for d in delays)


class TestFollowEvents:
    async def test_failures_back_off_then_events_flow(self) -> None:
        """If the first connections fail, each is logged with a growing
        wait, and events flow once one succeeds."""
        script = Script(
            [
                ([], DaemonUnavailable("down")),
                ([], OSError("refused")),
                ([MARKER, Event("work", "domain-start", {})], None),
            ]
        )

        with capture_logs() as logs:
            stream = follow_events(script, TINY)
            events = await _take(stream, 2)
            await stream.aclose()

        lost = [e for e in logs if e["event"] == "qubesd_events_disconnected"]
        assert [(e["attempt"], e["retry_in"]) for e in lost] == [
            (1, 0.01),
            (2, 0.02),
        ]
        assert events == [MARKER, Event("work", "domain-start", {})]

    async def test_each_connection_yields_a_marker(self) -> None:
        """If a connection ends and a new one starts, the caller sees the
        marker again before the new connection's events."""
        script = Script(
            [
                ([MARKER, Event("a", "x", {})], None),
                ([MARKER, Event("b", "y", {})], None),
            ]
        )

        stream = follow_events(script, TINY)
        events = await _take(stream, 4)
        await stream.aclose()

        assert [e.name for e in events] == [
            CONNECTION_ESTABLISHED,
            "x",
            CONNECTION_ESTABLISHED,
            "y",
        ]

    async def test_success_resets_the_backoff(self) -> None:
        """If a connection succeeds after failures, the next failure waits
        the first delay again."""
        script = Script(
            [
                ([], OSError("a")),
                ([], OSError("b")),
                ([MARKER], DaemonUnavailable("lost")),
                ([MARKER], None),
            ]
        )

        with capture_logs() as logs:
            stream = follow_events(script, TINY)
            await _take(stream, 2)
            await stream.aclose()

        lost = [e for e in logs if e["event"] == "qubesd_events_disconnected"]
        assert [e["attempt"] for e in lost] == [1, 2, 1]
        assert lost[2]["reason"] == "DaemonUnavailable: lost"

    async def test_missing_marker_is_supplied(self) -> None:
        """If a connection's first event is not the marker, one is yielded
        before it."""
        script = Script([([Event("a", "x", {})], None)])

        stream = follow_events(script, TINY)
        events = await _take(stream, 2)
        await stream.aclose()

        assert events == [MARKER, Event("a", "x", {})]

    async def test_unexpected_error_ends_the_iterator(self) -> None:
        """If a connection fails with a bug (not an outage), it is raised
        and the follower does not retry."""
        script = Script([([MARKER], RuntimeError("bug"))])

        stream = follow_events(script, TINY)
        await _take(stream, 1)
        with pytest.raises(RuntimeError):
            await _take(stream, 1)

        assert script.calls == 1

    async def test_closing_closes_the_connection(self) -> None:
        """If the caller closes the iterator, the open connection is
        closed too."""
        script = Script([([MARKER, Event("a", "x", {})], None)])

        stream = follow_events(script, TINY)
        await _take(stream, 1)
        await stream.aclose()

        assert script.closed == 1

    async def test_cancellation_ends_the_iterator(self) -> None:
        """If the consuming task is cancelled while waiting, it ends."""
        script = Script([([], OSError("down"))])
        stream = follow_events(script, Backoff(first=60, cap=60, jitter=0))

        waiting = asyncio.ensure_future(anext(stream))
        while script.calls == 0:
            await asyncio.sleep(0)
        waiting.cancel()

        with pytest.raises(asyncio.CancelledError):
            await waiting
