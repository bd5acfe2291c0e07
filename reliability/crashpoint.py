# SPDX-License-Identifier: MIT
"""Run nexusd so that it kills itself with SIGKILL at a chosen point.

(A kill right after a guest got its reply is made by the crash harness
itself, from the guest's side: see :mod:`reliability.crash`.)

``NEXUS_CRASH_POINT`` names the point and ``NEXUS_CRASH_AFTER`` how many
times it is passed before the kill (default 1). The points wrap nexusd's
own functions from outside, so nexusd carries no test hooks; a kill there
is what a power cut at that instant leaves on disk, short of the page
cache (which SIGKILL keeps and a power cut loses; fsync is what covers
that, and is checked by reading the code, not here).

Run as ``python -m reliability.crashpoint NEXUSD-ARGS...``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["IMPORT_ENV", "POINTS", "install", "run_nexusd"]

#: Each point, and what has happened on disk when the kill comes.
POINTS: dict[str, str] = {
    "before_commit": "a batch of writes ran in its transaction; no COMMIT",
    "after_commit": "COMMIT returned; no caller has been answered",
    "policy_temp_written": "the new policy file is written and fsynced"
    " under its temporary name; not renamed",
    "policy_renamed": "the policy file is renamed into place; the folder"
    " is not fsynced",
    "import_created": "a template import made the TemplateVM; nexusd's tag"
    " is not on it yet",
    "import_marked": "the new template carries nexusd's tag and the"
    " importing mark; no image byte is in",
    "import_streaming": "a template import handed a chunk of the image to"
    " qubesd",
    "import_completed": "the template is marked complete; the import is not"
    " in the audit trail yet",
}
#: Set to ``{"name": ..., "image": ..., "sha256": ...}`` (JSON), nexusd
#: imports that template once it has started.
IMPORT_ENV = "NEXUS_IMPORT"


class _Counter:
    def __init__(self, point: str, after: int) -> None:
        self.point = point
        self.after = after
        self.passed = 0

    def hit(self, point: str) -> None:
        if point != self.point:
            return
        self.passed += 1
        if self.passed >= self.after:
            os.kill(os.getpid(), signal.SIGKILL)


class _OsProxy(ModuleType):
    """``os`` for nexusd.linkpolicy, with renames that pass two points."""

    def __init__(self, counter: _Counter) -> None:
        super().__init__("os")
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _moved(self, move: Callable[..., None], *args: Any) -> None:
        self._counter.hit("policy_temp_written")
        move(*args)
        self._counter.hit("policy_renamed")

    def rename(self, *args: Any, **kwargs: Any) -> None:
        self._moved(lambda: os.rename(*args, **kwargs))

    def replace(self, *args: Any, **kwargs: Any) -> None:
        self._moved(lambda: os.replace(*args, **kwargs))


def install(point: str, after: int = 1) -> None:
    """Make this process SIGKILL itself the *after*-th time it reaches
    *point* (one of :data:`POINTS`).

    Raises:
        ValueError: no such point.
    """
    if point not in POINTS:
        msg = f"unknown crash point {point!r}; known: {', '.join(POINTS)}"
        raise ValueError(msg)
    counter = _Counter(point, after)

    from nexusd import linkpolicy
    from nexusd.store import db

    run_batch = db._run_batch

    def crashing_batch(conn: Any, ops: list[Any]) -> Any:
        def passing(op: Any) -> Any:
            def run(c: Any) -> Any:
                try:
                    return op(c)
                finally:
                    if op is ops[-1]:
                        counter.hit("before_commit")

            return run

        outcomes = run_batch(conn, [passing(op) for op in ops])
        counter.hit("after_commit")
        return outcomes

    db._run_batch = crashing_batch
    linkpolicy.os = _OsProxy(counter)  # type: ignore[assignment]
    _install_import_points(counter)


def _install_import_points(counter: _Counter) -> None:
    from nexusd.nixos import marks
    from nexusd.qubes.socket_port import SocketPort

    create_qube = SocketPort.create_qube
    set_feature = SocketPort.set_feature
    import_volume = SocketPort.import_volume

    async def crashing_create(self: Any, *args: Any, **kwargs: Any) -> None:
        await create_qube(self, *args, **kwargs)
        counter.hit("import_created")

    async def crashing_feature(
        self: Any, qube: str, name: str, value: str
    ) -> None:
        await set_feature(self, qube, name, value)
        if name == marks.IMAGE_STATE:
            if value == marks.STATE_IMPORTING:
                counter.hit("import_marked")
            else:
                counter.hit("import_completed")

    async def crashing_import(
        self: Any, qube: str, volume: str, size: int, chunks: Any
    ) -> None:
        async def passing() -> Any:
            async for chunk in chunks:
                yield chunk
                counter.hit("import_streaming")

        await import_volume(self, qube, volume, size, passing())

    SocketPort.create_qube = crashing_create  # type: ignore[method-assign]
    SocketPort.set_feature = crashing_feature  # type: ignore[method-assign]
    SocketPort.import_volume = crashing_import  # type: ignore[method-assign]


def _import_after_start(spec: dict[str, Any]) -> None:
    """Make the daemon import the template *spec* once it has started."""
    import asyncio

    from nexusd.daemon import Daemon

    start = Daemon.start

    async def starting(self: Daemon) -> None:
        await start(self)

        async def run() -> None:
            with contextlib.suppress(Exception):
                await self.operations["import_template"](**spec)

        self._tasks.append(asyncio.create_task(run()))

    Daemon.start = starting  # type: ignore[method-assign]


def run_nexusd(argv: list[str]) -> int:
    """Install the crash point named in the environment, run nexusd."""
    point = os.environ.get("NEXUS_CRASH_POINT")
    if point:
        install(point, int(os.environ.get("NEXUS_CRASH_AFTER", "1")))
    spec = os.environ.get(IMPORT_ENV)
    if spec:
        _import_after_start(json.loads(spec))
    from nexusd.daemon import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(run_nexusd(sys.argv[1:]))
