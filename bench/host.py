# SPDX-License-Identifier: MIT
"""nexusd as a process for the benchmarks: ``python -m bench.host ROOT``.

It runs nexusd's own :class:`~nexusd.daemon.Daemon` on the simulated dom0
folder *ROOT*, with nexusd's logging (JSON lines on stderr) and its real
sd_notify sender, so the bench sees ``READY=1`` on its datagram socket and
reads the process's memory from ``/proc``. Only the Admin API port is the
bench's in-memory one (:mod:`bench.port`), so that the figures are nexusd's
and not the cost of a simulated qubesd.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from bench.port import BenchPort
from bench.seed import CONFIG_NAME, QUBES_NAME
from nexusd.config import load_config
from nexusd.daemon import Daemon
from nexusd.logs import configure_logging

__all__ = ["main"]


async def _serve(root: Path) -> None:
    config = load_config(root / CONFIG_NAME, sim_root=root)
    port = BenchPort.from_file(root / QUBES_NAME)
    daemon = Daemon(config, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, port.reconnect)
    try:
        await daemon.start()
        await stop.wait()
    finally:
        await daemon.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM; return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.host ROOT", file=sys.stderr)
        return 2
    configure_logging(level="info", journal=False)
    asyncio.run(_serve(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
