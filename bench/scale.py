# SPDX-License-Identifier: MIT
"""Scale: start, memory, policy regeneration and reconcile against the
number of qubes, containers and links.

Start and memory come from nexusd as a process (``bench.host``): the time
from exec to ``READY=1`` on the notify socket, then to its first answered
call, and ``VmRSS``/``VmHWM`` from ``/proc``. Regeneration, reconcile and
the shadow report are timed in this process around nexusd's own methods,
on the same seeded folder. Where the simulated qubesd can hold the qubes
(qubesd allows 254 qids, so not at 1,000), the reconcile is also timed
through its socket, both sides in this process.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import request_bytes, run_level, wait_serving
from bench.port import GUEST_TAG, BenchPort
from bench.proc import start_server
from bench.seed import (
    CONFIG_NAME,
    LINK_PORT,
    QUBES_NAME,
    Population,
    guest_name,
    seed_root,
)
from nexusd.config import load_config
from nexusd.daemon import Daemon
from nexusd.follower import QubesFollower
from nexusd.guests import GuestRegistry
from nexusd.qubes.socket_port import SocketPort
from nexusd.sim.layout import SimLayout
from nexusd.sim.model import MAX_QID, Dom0Model
from nexusd.sim.qubesd import QubesdServer
from nexusd.store import Store
from nexusd.store import links as link_sql

__all__ = ["DEFAULT_POPULATIONS", "ScaleSettings", "run_scale"]

DEFAULT_POPULATIONS = (
    Population(100, 100, 100),
    Population(1000, 1000, 1000),
    Population(1000, 10000, 10000),
)
#: How long nexusd may take after READY=1 to answer its first call.
SERVING_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ScaleSettings:
    """Points and repetitions of the scale runs."""

    populations: Sequence[Population] = DEFAULT_POPULATIONS
    repeats: int = 5
    read_guests: int = 16
    read_s: float = 1.0


def _list_call(index: int) -> bytes:
    return request_bytes("nexus.ContainerList", "", guest_name(index))


async def _process_figures(
    root: Path, settings: ScaleSettings
) -> dict[str, Any]:
    layout_socket = load_config(root / CONFIG_NAME, sim_root=root).paths.socket
    server = start_server("bench.host", [str(root)], layout_socket, root)
    try:
        waited = await wait_serving(
            str(layout_socket), _list_call(0), SERVING_TIMEOUT_S
        )
        ready = server.memory()
        guests = settings.read_guests
        reads = await run_level(
            str(layout_socket),
            lambda i: [_list_call(i)],
            guests,
            duration_s=settings.read_s,
            warmup_s=0.1,
        )
        loaded = server.memory()
    finally:
        status = server.stop()
    return {
        "ready_s": server.ready_s,
        "first_call_s": server.ready_s + waited,
        "rss_kib": ready.rss_kib,
        "rss_after_reads_kib": loaded.rss_kib,
        "hwm_kib": loaded.hwm_kib,
        "read": reads.as_dict(),
        "exit_status": status,
    }


async def _timed_reconcile(daemon: Daemon, port: BenchPort) -> float:
    follower = daemon.follower
    if follower is None:
        msg = "daemon has no follower"
        raise RuntimeError(msg)
    follower.reconciled.clear()
    began = time.perf_counter()
    port.reconnect()
    await follower.reconciled.wait()
    return time.perf_counter() - began


async def _timed_regeneration(daemon: Daemon, add: bool) -> float:
    links, store = daemon.links, daemon.store
    if links is None or store is None:
        msg = "daemon is not started"
        raise RuntimeError(msg)
    # One more link (from container c2 to c0, which the seed never links)
    # or one less, so that the file's content changes each time.
    if add:
        await store.write(
            lambda conn: link_sql.create_link(
                conn,
                from_qube=guest_name(2),
                from_container="c2",
                to_qube=guest_name(0),
                to_container="c0",
                port=LINK_PORT,
                limit=1 << 30,
            )
        )
    else:
        await store.write(
            lambda conn: link_sql.remove_link(
                conn,
                caller=guest_name(2),
                other=guest_name(0),
                from_container="c2",
                to_container="c0",
                port=LINK_PORT,
            )
        )
    began = time.perf_counter()
    changed = await links.sync_policy()
    took = time.perf_counter() - began
    if not changed:
        msg = "the policy file did not change"
        raise RuntimeError(msg)
    return took


async def _in_process_figures(
    root: Path, settings: ScaleSettings
) -> dict[str, Any]:
    config = load_config(root / CONFIG_NAME, sim_root=root)
    port = BenchPort.from_file(root / QUBES_NAME)
    daemon = Daemon(config, port=port)
    began = time.perf_counter()
    await daemon.start()
    started = time.perf_counter() - began
    try:
        if daemon.follower is None or daemon.links is None:
            msg = "daemon did not start its follower"
            raise RuntimeError(msg)
        await daemon.follower.reconciled.wait()
        reconcile = [
            await _timed_reconcile(daemon, port)
            for _ in range(settings.repeats)
        ]
        regeneration = [
            await _timed_regeneration(daemon, add=i % 2 == 0)
            for i in range(2 * settings.repeats)
        ]
        began = time.perf_counter()
        await daemon.links.links_of(guest_name(0))
        shadow = time.perf_counter() - began
    finally:
        await daemon.stop()
    return {
        "start_in_process_s": started,
        "reconcile_s": statistics.median(reconcile),
        "reconcile_samples_s": reconcile,
        "regeneration_s": statistics.median(regeneration),
        "regeneration_samples_s": regeneration,
        "shadow_report_s": shadow,
    }


async def _sim_reconcile(
    root: Path, population: Population, repeats: int
) -> float | None:
    """Reconcile through the simulated qubesd's socket (one Admin API call
    per qube for its tags, one for its quota feature): what the in-memory
    port leaves out. ``None`` where the simulator cannot hold that many
    qubes (qubesd's qid limit)."""
    if population.qubes + 2 >= MAX_QID:
        return None
    layout = SimLayout(root)
    model = Dom0Model(layout)
    model.seed_qube("TemplateVM", "nixos", "black")
    for qube in BenchPort.from_file(root / QUBES_NAME).qubes.values():
        if qube.name != "dom0":
            model.seed_qube(
                "AppVM",
                qube.name,
                "red",
                template="nixos",
                qube_uuid=qube.uuid,
                tags=(GUEST_TAG,),
            )
    config = load_config(root / CONFIG_NAME, sim_root=root)
    samples = []
    async with QubesdServer(model, layout.qubesd_socket):
        port = SocketPort(layout.qubesd_socket, sim_root=root)
        store = await Store.open(config.database)
        try:
            follower = QubesFollower(port, GuestRegistry(config.qubes), store)
            for _ in range(repeats):
                began = time.perf_counter()
                await follower.reconcile()
                samples.append(time.perf_counter() - began)
        finally:
            await store.close()
            await port.close()
    return statistics.median(samples)


def run_scale(workdir: Path, settings: ScaleSettings) -> list[dict[str, Any]]:
    """Measure every population; one row each, smallest first."""
    rows = []
    for population in settings.populations:
        root = workdir / f"scale-{population.containers}"
        began = time.perf_counter()
        seed_root(root, population)
        seeded = time.perf_counter() - began
        row: dict[str, Any] = {
            "qubes": population.qubes,
            "containers": population.containers,
            "links": population.links,
            "label": population.label,
            "seed_s": seeded,
        }
        row.update(asyncio.run(_process_figures(root, settings)))
        row.update(asyncio.run(_in_process_figures(root, settings)))
        row["reconcile_sim_qubesd_s"] = asyncio.run(
            _sim_reconcile(root, population, settings.repeats)
        )
        rows.append(row)
    return rows
