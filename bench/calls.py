# SPDX-License-Identifier: MIT
"""Call overhead: nexusd against the bare baseline server, same load.

128 guests are seeded, each with two containers and one link, so a
``nexus.ContainerList`` answers what a real guest would get. The durable
write is ``nexus.ContainerCreate`` then ``nexus.ContainerRemove`` of a
container of the guest's own, over and over; each is answered only after
its commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench.load import (
    LevelResult,
    request_bytes,
    run_level,
    run_paced,
    wait_serving,
)
from bench.proc import ServerProcess, start_server
from bench.seed import Population, guest_name, seed_root

__all__ = ["CallSettings", "run_calls"]

#: The spec of the container the write load creates and removes.
WRITE_PAYLOAD = b'{"ports":[8080]}'
WRITE_CONTAINER = "w"
#: How long nexusd may take after READY=1 to answer its first call.
SERVING_TIMEOUT_S = 60.0


class CallSettings:
    """Levels and timing of the call-overhead runs."""

    def __init__(
        self,
        levels: Sequence[int] = (1, 16, 128),
        duration_s: float = 3.0,
        warmup_s: float = 0.2,
        rounds: int = 3,
        paced_rate: float = 400.0,
    ) -> None:
        """Measure each level for *duration_s* per server, split in
        *rounds* that each start with *warmup_s* not counted; the paced
        runs offer *paced_rate* calls per second from all guests."""
        self.paced_rate = paced_rate
        self.levels = tuple(levels)
        self.rounds = rounds
        self.duration_s = duration_s
        self.warmup_s = warmup_s


def _read_cycle(index: int) -> list[bytes]:
    return [request_bytes("nexus.ContainerList", "", guest_name(index))]


def _write_cycle(index: int) -> list[bytes]:
    guest = guest_name(index)
    return [
        request_bytes(
            "nexus.ContainerCreate",
            WRITE_CONTAINER,
            guest,
            payload=WRITE_PAYLOAD,
        ),
        request_bytes("nexus.ContainerRemove", WRITE_CONTAINER, guest),
    ]


Cycle = Callable[[int], list[bytes]]
OPERATIONS: dict[str, Cycle] = {
    "read": _read_cycle,
    "write": _write_cycle,
}


def _ratios(nexusd: LevelResult, baseline: LevelResult) -> dict[str, float]:
    ours, base = nexusd.summary(), baseline.summary()
    return {
        "p50": ours.p50 / base.p50,
        "p99": ours.p99 / base.p99,
        "calls_per_s": nexusd.calls_per_s / baseline.calls_per_s,
    }


Runner = Callable[[str], Awaitable[LevelResult]]


async def _level(
    servers: dict[str, ServerProcess],
    runner: Runner,
    level: int,
    settings: CallSettings,
) -> dict[str, Any]:
    """One level, in rounds that alternate the servers, so that a burst of
    load from elsewhere on the machine falls on both alike."""
    results = {name: LevelResult(level, 0.0) for name in servers}
    cpu_used = dict.fromkeys(servers, 0.0)
    idle_cpu = dict.fromkeys(servers, 0.0)
    names = list(servers)
    for round_index in range(settings.rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            before = {n: s.cpu_seconds() for n, s in servers.items()}
            results[name].absorb(await runner(str(servers[name].socket)))
            for other, server in servers.items():
                used = server.cpu_seconds() - before[other]
                if other == name:
                    cpu_used[name] += used
                else:
                    idle_cpu[name] += used
    row: dict[str, Any] = {}
    for name, result in results.items():
        row[name] = result.as_dict()
        row[name]["server_cpu_ms_per_call"] = (
            cpu_used[name] * 1000 / max(result.all_calls, 1)
        )
        row[name]["idle_server_cpu_s"] = idle_cpu[name]
    nexusd, base = results["nexusd"], results["baseline"]
    row["ratio"] = _ratios(nexusd, base)
    row["ratio"]["server_cpu_per_call"] = (
        row["nexusd"]["server_cpu_ms_per_call"]
        / row["baseline"]["server_cpu_ms_per_call"]
    )
    return row


async def _measure(
    servers: dict[str, ServerProcess], settings: CallSettings
) -> list[dict[str, Any]]:
    await wait_serving(
        str(servers["nexusd"].socket), _read_cycle(0)[0], SERVING_TIMEOUT_S
    )
    rows = []
    share = settings.duration_s / settings.rounds
    guests = max(settings.levels)
    for operation, cycle in OPERATIONS.items():
        for level in settings.levels:

            def closed(
                path: str, c: Cycle = cycle, n: int = level
            ) -> Awaitable[LevelResult]:
                return run_level(
                    path, c, n, duration_s=share, warmup_s=settings.warmup_s
                )

            row = await _level(servers, closed, level, settings)
            rows.append(
                {"operation": operation, "mode": "closed", "concurrency": level}
                | row
            )

        def paced(path: str, c: Cycle = cycle) -> Awaitable[LevelResult]:
            return run_paced(
                path,
                c,
                guests,
                settings.paced_rate,
                duration_s=share,
                warmup_s=settings.warmup_s,
            )

        row = await _level(servers, paced, guests, settings)
        rows.append(
            {
                "operation": operation,
                "mode": "paced",
                "concurrency": guests,
                "rate": settings.paced_rate,
            }
            | row
        )
    return rows


def run_calls(workdir: Path, settings: CallSettings) -> dict[str, Any]:
    """Run the call-overhead levels; return rows and the servers' facts."""
    guests = max(settings.levels)
    root = workdir / "calls"
    layout = seed_root(root, Population(max(guests, 2), 2 * guests, guests))
    baseline_socket = root / "baseline.sock"
    servers = {
        "baseline": start_server(
            "bench.baseline", [str(baseline_socket)], baseline_socket, root
        ),
    }
    try:
        servers["nexusd"] = start_server(
            "bench.host", [str(root)], layout.nexusd_socket, root
        )
        before = {n: s.memory() for n, s in servers.items()}
        rows = asyncio.run(_measure(servers, settings))
        after = {n: s.memory() for n, s in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    return {
        "guests": guests,
        "rows": rows,
        "memory_kib": {
            name: {
                "rss_ready": before[name].rss_kib,
                "rss_after": after[name].rss_kib,
                "hwm_after": after[name].hwm_kib,
            }
            for name in servers
        },
    }
