# SPDX-License-Identifier: MIT
"""Follow ``admin.Events`` across qubesd restarts, with capped backoff.

One connection at a time; when it ends or fails the loop logs why, waits
(1 s, 2 s, 4 s ... up to a cap), and connects again. Each connection starts
with ``connection-established`` so the caller reconciles from a fresh list.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass

import structlog

from nexusd.qubes.errors import QubesError
from nexusd.qubes.port import CONNECTION_ESTABLISHED, Event

__all__ = ["Backoff", "follow_events"]

log = structlog.get_logger()

#: First wait after a lost connection, in seconds (qubesadmin waits 1 s).
BACKOFF_FIRST = 1.0
#: Longest wait between two attempts, in seconds.
BACKOFF_CAP = 30.0


@dataclass(frozen=True)
class Backoff:
    """Waits between reconnection attempts.

    Attributes:
        first: the first wait, in seconds.
        cap: the longest wait.
        jitter: a fraction of each wait added at random, so many clients
            do not reconnect in step.
    """

    first: float = BACKOFF_FIRST
    cap: float = BACKOFF_CAP
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        """The wait before retry number *attempt* (0 for the first)."""
        base = min(self.cap, self.first * 2 ** min(attempt, 32))
        # Jitter spreads reconnects; it is not security-relevant.
        spread = 1 + self.jitter * random.random()  # noqa: S311
        return float(base * spread)


Connect = Callable[[], AsyncGenerator[Event, None]]


async def follow_events(
    connect: Connect, backoff: Backoff | None = None
) -> AsyncIterator[Event]:
    """Yield events from connection after connection, forever.

    *connect* opens one connection and yields its events until it ends
    (returns) or fails (raises ``QubesError`` or ``OSError``). If its
    first event is not ``connection-established``, one is yielded before
    it, so every (re)connect reaches the caller. Other exceptions, and
    cancellation, end the iterator.
    """
    backoff = backoff or Backoff()
    attempt = 0
    while True:
        reason = "stream ended"
        try:
            async with aclosing(connect()) as stream:
                first = True
                async for event in stream:
                    if first:
                        first = False
                        attempt = 0
                        log.info("qubesd_events_connected")
                        if event.name != CONNECTION_ESTABLISHED:
                            yield Event(None, CONNECTION_ESTABLISHED, {})
                    yield event
        except (QubesError, OSError, TimeoutError) as err:
            reason = f"{type(err).__name__}: {err}"
        wait = backoff.delay(attempt)
        attempt += 1
        log.warning(
            "qubesd_events_disconnected",
            reason=reason,
            retry_in=round(wait, 2),
            attempt=attempt,
        )
        await asyncio.sleep(wait)
