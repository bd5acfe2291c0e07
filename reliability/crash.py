# SPDX-License-Identifier: MIT
"""Crash consistency: guests call, nexusd is killed with SIGKILL, restarted,
and the disk is checked against what the guests were told.

Each cycle starts nexusd, lets a few guest threads create and remove
containers and links, and kills nexusd either from outside after a random
delay or from inside at a named point (:mod:`reliability.crashpoint`).
Before the restart the links file must be one whole rendering; after it,
every ``ok`` must be in the database, every refused or removed object
absent, every object owned and audited, and the links file must equal what
the database implies, with no temporary file left.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nexusd.sim.client import qubesd_call
from nexusd.sim.model import Dom0Model
from reliability.crashpoint import IMPORT_ENV, POINTS
from reliability.dom0 import GUESTS, Dom0, Reply
from reliability.invariants import (
    Snapshot,
    check_database,
    check_policy_complete,
    check_policy_matches,
    guest_owners,
    leftover_files,
    read_snapshot,
)
from reliability.model import (
    UNCERTAIN_CODES,
    ContainerKey,
    LinkKey,
    Model,
    State,
)

__all__ = ["CYCLE_POINTS", "END", "CrashReport", "run_crash_cycles"]

#: Limits high enough that quotas never refuse the workload's calls.
LIMITS: dict[str, int | float] = {
    "containers_per_qube": 1000,
    "containers_total": 4000,
    "links_per_qube": 1000,
    "calls_per_source": 32,
    "calls_total": 64,
}
#: Guest threads per cycle; each owns the objects it names.
THREADS = 4
#: Calls per thread per cycle at most.
CALLS_PER_THREAD = 12
#: Containers a thread keeps at most before it prefers removals.
KEEP = 6
_PORTS = (80, 443, 5432, 8080)
#: Share of cycles killed from outside after a random delay.
EXTERNAL_SHARE = 0.4
#: Longest delay before an outside kill, in seconds.
EXTERNAL_DELAY_MAX = 0.25


@dataclass
class CrashReport:
    """What a run tried and found."""

    cycles: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    points_not_reached: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    objects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The report as text lines."""
        out = [
            f"cycles: {self.cycles} in {self.seconds:.1f} s",
            "kills: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.kills.items())),
        ]
        if self.points_not_reached:
            out.append(
                "points not reached (killed from outside at the end): "
                + ", ".join(
                    f"{k} {v}"
                    for k, v in sorted(self.points_not_reached.items())
                )
            )
        out.append(
            f"calls: {sum(self.calls.values())} ("
            + ", ".join(f"{k} {v}" for k, v in sorted(self.calls.items()))
            + ")"
        )
        out.append(
            "objects at the end: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.objects.items()))
        )
        out.append(f"invariant violations: {len(self.violations)}")
        out += [f"  {v}" for v in self.violations[:50]]
        return out


#: Size of the image the import cycles stream (three 1 MiB chunks).
IMAGE_BYTES = 3 << 20
#: How long nexusd's sweep may take to remove a half-made template.
IMPORT_SETTLE = 10.0
#: How long a nexusd that stopped answering may take to be reaped.
EXIT_WAIT = 2.0
#: A cycle that kills nexusd from outside once every guest is done.
END = "end"
#: Where a cycle can kill nexusd: the points inside it, and right after a
#: guest got an ``ok`` (done from the guest's side).
CYCLE_POINTS: dict[str, str] = {
    **POINTS,
    "after_reply": "a guest has just read an ok reply",
}


class _ReplyKill:
    """SIGKILL nexusd as soon as guests have read *after* ok replies."""

    def __init__(self, pid: int | None, after: int) -> None:
        self.pid = pid
        self.after = after
        self.seen = 0
        self.lock = threading.Lock()

    def ok_read(self) -> None:
        with self.lock:
            self.seen += 1
            if self.pid is not None and self.seen == self.after:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)


class _Guest(threading.Thread):
    """One thread of guest calls on objects named with its own prefix."""

    def __init__(
        self,
        dom0: Dom0,
        model: Model,
        index: int,
        names: Counter[int],
        rng: random.Random,
        stop: threading.Event,
        calls: Counter[str],
        killer: _ReplyKill,
    ) -> None:
        super().__init__(name=f"guest-{index}", daemon=True)
        self.killer = killer
        self.dom0 = dom0
        self.model = model
        self.prefix = f"t{index}"
        self.index = index
        self.names = names
        self.rng = rng
        self.stop = stop
        self.calls = calls
        self.violations: list[str] = []

    def run(self) -> None:
        for _ in range(CALLS_PER_THREAD):
            if self.stop.is_set():
                return
            reply = self.step()
            if (
                reply is not None
                and reply.body is None
                and (
                    reply.error
                    in {"ConnectionRefusedError", "FileNotFoundError"}
                )
            ):
                return

    def _new_name(self) -> str:
        self.names[self.index] += 1
        return f"{self.prefix}x{self.names[self.index]:x}"

    def step(self) -> Reply | None:
        mine = self.model.present_containers(self.prefix)
        links = self.model.present_links(self.prefix)
        offered = [c for c in mine if self.model.ports.get(c)]
        choices = ["create"] * 3
        if len(mine) > KEEP:
            choices = ["remove"] * 3
        if len(mine) >= 2 and offered:
            choices += ["link"] * 3
        if links:
            choices += ["unlink"]
        if mine:
            choices += ["remove", "report"]
        action = self.rng.choice(choices)
        if action == "create":
            return self.create()
        if action == "remove":
            return self.remove(self.rng.choice(mine))
        if action == "report":
            return self.report(self.rng.choice(mine))
        if action == "unlink":
            return self.unlink(self.rng.choice(links))
        target = self.rng.choice(offered)
        sources = [c for c in mine if c.qube != target.qube]
        if not sources:
            return self.create()
        return self.link(self.rng.choice(sources), target)

    def _count(self, reply: Reply) -> None:
        with self.model.lock:
            self.calls[reply.code or f"no reply ({reply.error})"] += 1

    def _settle(self, reply: Reply, expected: bool = True) -> State:
        """The state a call's reply leaves its object in."""
        self._count(reply)
        if reply.ok:
            self.killer.ok_read()
            return State.PRESENT
        if reply.code is None or reply.code in UNCERTAIN_CODES:
            return State.UNKNOWN
        if expected:
            self.violations.append(
                f"call on a present object refused: {reply.body}"
            )
        return State.ABSENT

    def create(self) -> Reply:
        qube = self.rng.choice(GUESTS)
        key = ContainerKey(qube, self._new_name())
        ports = tuple(sorted(self.rng.sample(_PORTS, self.rng.randint(0, 2))))
        with self.model.lock:
            self.model.ports[key] = ports
            self.model.containers[key] = State.UNKNOWN
        reply = self.dom0.call(
            "nexus.ContainerCreate",
            key.name,
            source=qube,
            payload={"ports": list(ports)},
        )
        self.model.set_container(key, self._settle(reply))
        return reply

    def remove(self, key: ContainerKey) -> Reply:
        self.model.set_container(key, State.UNKNOWN)
        reply = self.dom0.call(
            "nexus.ContainerRemove", key.name, source=key.qube
        )
        state = self._settle(reply)
        if state is State.PRESENT:
            state = State.ABSENT
        self.model.set_container(key, state)
        return reply

    def report(self, key: ContainerKey) -> Reply:
        reply = self.dom0.call(
            "nexus.ContainerReport",
            key.name,
            source=key.qube,
            payload={"state": self.rng.choice(["running", "stopped"])},
        )
        if self._settle(reply) is State.ABSENT:
            self.model.set_container(key, State.ABSENT)
        return reply

    def link(self, source: ContainerKey, target: ContainerKey) -> Reply:
        port = self.rng.choice(self.model.ports[target])
        key = LinkKey(source, target, port)
        with self.model.lock:
            was = self.model.links.get(key)
        if was is not State.PRESENT:
            self.model.set_link(key, State.UNKNOWN)
        reply = self.dom0.call(
            "nexus.LinkRequest",
            f"{target.name}.{port}",
            source=source.qube,
            target=f"name {target.qube}",
            payload={"from": source.name},
        )
        state = self._settle(reply)
        if state is not State.PRESENT and was is State.PRESENT:
            state = State.UNKNOWN
        self.model.set_link(key, state)
        return reply

    def unlink(self, key: LinkKey) -> Reply:
        caller, other = key.source.qube, key.target.qube
        if self.rng.random() < 0.5:
            caller, other = other, caller
        self.model.set_link(key, State.UNKNOWN)
        reply = self.dom0.call(
            "nexus.LinkRemove",
            f"{key.target.name}.{key.port}",
            source=caller,
            target=f"name {other}",
            payload={"from": key.source.name},
        )
        state = self._settle(reply)
        if state is State.PRESENT:
            state = State.ABSENT
        self.model.set_link(key, state)
        return reply


def _one_cycle(
    dom0: Dom0,
    model: Model,
    rng: random.Random,
    names: Counter[int],
    report: CrashReport,
    last: Snapshot | None,
    point: str | None,
    imports: _Imports,
    *,
    first_pass: bool = False,
) -> tuple[list[str], Snapshot | None]:
    """Start nexusd (the restart after the last kill), check what the
    restart must have repaired, call, kill, check what the kill left.

    Returns:
        The violations, and the snapshot the next restart is checked
        against (the last one while no start got as far as serving).
    """
    after = 1 if first_pass else rng.randint(1, 4)
    inside = point if point in POINTS else None
    env = {}
    if point is not None and point.startswith("import_"):
        env[IMPORT_ENV] = json.dumps(imports.spec())
    try:
        dom0.start_nexusd(crash_point=inside, crash_after=after, env=env)
        serving = dom0.wait_serving()
    except RuntimeError:  # died before READY=1: killed at its point
        serving = False
    violations: list[str] = []
    if serving and last is not None:
        violations += _after_restart(dom0, last)
    if serving and not env:
        violations += imports.check(dom0)
    killer = _ReplyKill(
        dom0.nexusd_pid if point == "after_reply" else None, after
    )
    stop = threading.Event()
    guests = [
        _Guest(
            dom0,
            model,
            i,
            names,
            random.Random(rng.random()),  # noqa: S311 - a test's choices
            stop,
            report.calls,
            killer,
        )
        for i in range(THREADS)
    ]
    if serving:
        for guest in guests:
            guest.start()
    if point is None:
        time.sleep(rng.uniform(0, EXTERNAL_DELAY_MAX))
        report.kills["outside"] += 1
    else:
        for guest in guests:
            if guest.ident is not None:
                guest.join()
        if point == END:
            report.kills[END] += 1
        elif killer.seen >= after or dom0.wait_exit(EXIT_WAIT):
            report.kills[point] += 1
        else:
            report.points_not_reached[point] += 1
    dom0.kill_nexusd()
    stop.set()
    for guest in guests:
        if guest.ident is not None:
            guest.join()

    violations += [v for g in guests for v in g.violations]
    violations += check_policy_complete(dom0.root)
    snap = read_snapshot(dom0.database)
    violations += model.check(set(snap.containers), set(snap.links))
    violations += check_database(snap, guest_owners(dom0.root))
    return violations, snap if serving or last is None else last


@dataclass
class _Imports:
    """Template imports a cycle started, to check after the restart."""

    image: Path
    sha256: str
    pending: list[str] = field(default_factory=list)
    count: int = 0

    def spec(self) -> dict[str, str]:
        self.count += 1
        name = f"nixos-imp{self.count}"
        self.pending.append(name)
        return {"name": name, "image": str(self.image), "sha256": self.sha256}

    def check(self, dom0: Dom0) -> list[str]:
        """Each started import has left a complete template or nothing,
        once nexusd's sweep ran (waited for up to IMPORT_SETTLE s)."""
        deadline = time.monotonic() + IMPORT_SETTLE
        while True:
            found = {
                name: problem
                for name in self.pending
                if (problem := _template_problem(dom0, name, self.sha256))
            }
            if not found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        # As an administrator would: complete templates go again, so the
        # machine (and each restart's reconcile) stays small.
        for name in self.pending:
            if name not in found:
                with contextlib.suppress(OSError):
                    asyncio.run(
                        qubesd_call(
                            dom0.layout.qubesd_socket, "admin.vm.Remove", name
                        )
                    )
        self.pending = []
        return [f"template {n}: {p}" for n, p in sorted(found.items())]


def _template_problem(dom0: Dom0, name: str, sha256: str) -> str:
    model = Dom0Model.load(dom0.layout)
    qube = model.domains.get(name)
    if qube is None:
        return ""
    if "nexus-owned" not in qube.tags:
        return "left without nexusd's tag (nothing can tell it was nexusd's)"
    state = qube.features.get("nexus.image-state")
    if state != "complete":
        return f"left half-made (image-state {state!r}) after the sweep"
    if qube.features.get("nexus.image-sha256") != sha256:
        return "marked complete with another image's hash"
    return ""


def _after_restart(dom0: Dom0, snap: Snapshot) -> list[str]:
    """What a restart must have repaired: the links file equals what the
    database implies, and no temporary file is left."""
    return check_policy_matches(dom0.root, snap) + leftover_files(dom0.root)


def _make_image(path: Path) -> _Imports:
    """A small stand-in for a NixOS root image, the same every run."""
    data = hashlib.sha256(b"nexus").digest() * (IMAGE_BYTES // 32)
    path.write_bytes(data)
    return _Imports(path, hashlib.sha256(data).hexdigest())


def run_crash_cycles(
    root: Path,
    cycles: int,
    *,
    seed: int = 0,
    spawn: str = "fork",
    schedule: list[str | None] | None = None,
    progress: bool = False,
) -> CrashReport:
    """Run *cycles* kill cycles against a new simulated dom0 in *root*.

    Args:
        root: an empty or missing folder for the simulated dom0.
        cycles: how many kills.
        seed: seed of every random choice (same seed, same choices; the
            timing of the outside kills still varies).
        spawn: how nexusd is started (:class:`reliability.dom0.Dom0`).
        schedule: the crash point of each cycle in turn (None: a kill from
            outside at a random instant, ``END``: once the guests are
            done), repeated; each point is then passed once before the
            kill. By default each cycle draws one, a kill from outside
            with probability ``EXTERNAL_SHARE``.
        progress: print a line every 50 cycles.
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible, not secret
    report = CrashReport()
    model = Model()
    names: Counter[int] = Counter()
    dom0 = Dom0(root, limits=LIMITS, spawn=spawn).create()
    imports = _make_image(root / "nixos-root.img")
    started = time.monotonic()
    dom0.start_qubesd()
    last: Snapshot | None = None
    try:
        for cycle in range(cycles):
            if schedule:
                point = schedule[cycle % len(schedule)]
            elif rng.random() < EXTERNAL_SHARE:
                point = None
            else:
                point = rng.choice(sorted(CYCLE_POINTS))
            found, last = _one_cycle(
                dom0,
                model,
                rng,
                names,
                report,
                last,
                point,
                imports,
                first_pass=bool(schedule),
            )
            report.violations += [f"cycle {cycle}: {v}" for v in found]
            report.cycles += 1
            if progress and report.cycles % 50 == 0:
                print(  # noqa: T201 - progress of a long run
                    f"  {report.cycles} cycles,"
                    f" {len(report.violations)} violations",
                    flush=True,
                )
        if last is not None:
            dom0.start_nexusd()
            if not dom0.wait_serving():
                report.violations.append("nexusd died at the final restart")
            found = _after_restart(dom0, last) + imports.check(dom0)
            report.violations += [f"final restart: {v}" for v in found]
    finally:
        dom0.close()
        report.seconds = time.monotonic() - started
        report.objects = model.counts()
    return report
