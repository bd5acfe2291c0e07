# SPDX-License-Identifier: MIT
"""The nexusd process: start-up, sd_notify, watchdog, signals, shutdown.

Start-up order: configuration, database (checked, migrated), the qrexec
socket (inherited from systemd or bound here), the events follower, then
READY=1. Shutdown on SIGTERM: STOPPING=1, stop accepting, let calls in
flight finish within the grace period, close the database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import os
import signal
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import structlog

from nexusd import __version__
from nexusd.agentsync import AgentSync
from nexusd.changes import ChangeFeed
from nexusd.config import Config, ConfigError, load_config
from nexusd.errors import Unavailable
from nexusd.follower import QubesFollower
from nexusd.guests import GuestRegistry
from nexusd.logs import configure_logging
from nexusd.nixos import register as register_nixos
from nexusd.notify import Notifier, watchdog_interval
from nexusd.rpc.server import RpcLimits, RpcServer
from nexusd.services.containers import ContainerServices
from nexusd.services.links import LinkServices
from nexusd.store import Store, StoreCorrupt

__all__ = ["Daemon", "main"]

log = structlog.get_logger()

SOCKET_MODE = 0o660
SOCKET_GROUP = "qubes"
#: systemd passes inherited sockets from this descriptor on.
LISTEN_FDS_START = 3


def make_port(config: Config) -> Any:
    """The Admin API port: qubesd's socket protocol, or qubesadmin in dom0."""
    if config.sim_root is not None:
        from nexusd.qubes.socket_port import SocketPort

        return SocketPort(config.paths.qubesd_socket, sim_root=config.sim_root)
    from nexusd.qubes.qubesadmin_port import QubesadminPort

    return QubesadminPort(config.paths.qubesd_socket)


def inherited_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation), if any."""
    try:
        from systemd import daemon as sd_daemon

        fds = sd_daemon.listen_fds()
    except ImportError:
        pid = os.environ.get("LISTEN_PID", "")
        count = os.environ.get("LISTEN_FDS", "")
        fds = []
        if pid == str(os.getpid()) and count.isdigit():
            fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))
    if not fds:
        return None
    if len(fds) != 1:
        msg = f"expected one socket from systemd, got {len(fds)}"
        raise RuntimeError(msg)
    return socket.socket(fileno=fds[0])


def bind_socket(path: Path) -> socket.socket:
    """Bind the qrexec socket at *path* (0660, group qubes when it exists).

    A stale socket file (nobody listening) is replaced; a live one means
    another nexusd runs, and start-up stops.
    """
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            msg = f"{path} exists and is not a socket"
            raise RuntimeError(msg)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()
        else:
            msg = f"{path}: another nexusd is serving"
            raise RuntimeError(msg)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, SOCKET_MODE)
    with contextlib.suppress(KeyError, PermissionError):
        os.chown(path, -1, grp.getgrnam(SOCKET_GROUP).gr_gid)
    sock.listen(128)
    return sock


def dbus_wanted(config: Config) -> bool:
    """Whether to offer the D-Bus interface: always on dom0's system bus,
    and with the simulated dom0 only on a bus named by NEXUS_DBUS_ADDRESS."""
    if os.environ.get("NEXUS_DBUS_ADDRESS"):
        return True
    return config.sim_root is None


class Daemon:
    """nexusd's parts, wired; usable in-process by tests and the demo."""

    def __init__(
        self,
        config: Config,
        *,
        port: Any = None,
        notifier: Notifier | None = None,
    ) -> None:
        """Prepare; nothing runs until :meth:`start`."""
        self.config = config
        self.port = port if port is not None else make_port(config)
        self.notifier = notifier or Notifier()
        self.registry = GuestRegistry(config.qubes)
        self.feed = ChangeFeed()
        self.dbus: Any = None
        #: Long administrator operations by name, for the D-Bus jobs:
        #: ``import_template``, ``create_qube``, ``apply``, ``diff``,
        #: ``audit``; each an async callable taking keyword arguments (and
        #: ``progress=callable(done, total)`` where it reports progress)
        #: and returning a JSON-able dict. Filled by ``nexusd.nixos``.
        self.operations: dict[str, Any] = {}
        self.store: Store | None = None
        self.server: RpcServer | None = None
        self.follower: QubesFollower | None = None
        self.links: LinkServices | None = None
        self.agents: AgentSync | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._bound: Path | None = None
        self._stopped = False

    async def start(self) -> None:
        """Open the database, serve the socket, follow qubesd."""
        self.store = await Store.open(self.config.database)
        limits = self.config.limits
        self.links = LinkServices(
            self.config, self.store, self.registry, feed=self.feed
        )
        self.agents = AgentSync(
            self.port,
            self.registry,
            self.links.view,
            limits.agent_sync_timeout,
        )
        self.links.agents = self.agents
        containers = ContainerServices(
            self.config,
            self.store,
            self.registry,
            links_changed=self.links.changed,
            links_of=self.links.guest_links_of,
            feed=self.feed,
        )
        with contextlib.suppress(Unavailable):
            # Not writable now: logged, and repaired in the background.
            await self.links.sync_policy()
        specs = [*containers.specs(), *self.links.specs()]
        self.server = RpcServer(
            {spec.name: spec for spec in specs},
            RpcLimits(
                header_timeout=limits.header_timeout,
                payload_timeout=limits.payload_timeout,
                calls_per_source=limits.calls_per_source,
                calls_total=limits.calls_total,
                shutdown_grace=limits.shutdown_grace,
            ),
        )
        sock = inherited_socket()
        if sock is None:
            sock = bind_socket(self.config.paths.socket)
            self._bound = self.config.paths.socket
        await self.server.start(sock)
        agents = self.agents

        async def started(qube: str) -> None:
            agents.qube_started(qube)

        self.follower = QubesFollower(
            self.port,
            self.registry,
            self.store,
            on_purge=self.links.changed,
            on_start=started,
        )
        self._tasks.append(asyncio.create_task(self.follower.run()))
        interval = watchdog_interval()
        if interval is not None:
            self._tasks.append(asyncio.create_task(self._watchdog(interval)))
        # NixOS operations; the declared file is applied in the background,
        # so a slow or absent qubesd never delays READY.
        nixos = register_nixos(self)
        self._tasks.append(asyncio.create_task(nixos.run()))
        if dbus_wanted(self.config):
            from nexusd.dbus.service import DbusService

            self.dbus = DbusService(self)
            await self.dbus.start()
        self.notifier.ready(f"serving on {self.config.paths.socket}")
        log.info(
            "daemon_started",
            version=__version__,
            socket=str(self.config.paths.socket),
            database=str(self.config.database),
            sim=str(self.config.sim_root) if self.config.sim_root else None,
        )

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Stop accepting, finish calls in flight, close the database."""
        if self._stopped:
            return
        self._stopped = True
        self.notifier.stopping()
        if self.dbus is not None:
            await self.dbus.stop()
            self.dbus = None
        if self.server is not None:
            await self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.agents is not None:
            await self.agents.close()
        if self.links is not None:
            await self.links.close()
        close = getattr(self.port, "close", None)
        if close is not None:
            await close()
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self._bound is not None:
            with contextlib.suppress(FileNotFoundError):
                self._bound.unlink()
        log.info("daemon_stopped")


async def _run(config: Config) -> int:
    daemon = Daemon(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await daemon.start()
    except StoreCorrupt as err:
        log.error("database_corrupt", error=str(err))
        await daemon.stop()
        return 1
    except (OSError, RuntimeError) as err:
        log.error("start_failed", error=str(err))
        await daemon.stop()
        return 1
    await stop.wait()
    await daemon.stop()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexusd",
        description="dom0 daemon of TesseraQt: containers in NixOS qubes",
    )
    parser.add_argument("--config", type=Path, help="configuration file (TOML)")
    parser.add_argument(
        "--sim",
        type=Path,
        metavar="DIR",
        help="run against the simulated dom0 in DIR instead of dom0",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
    )
    parser.add_argument("--version", action="version", version=__version__)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run nexusd until SIGTERM; return the exit status."""
    args = _parser().parse_args(argv)
    configure_logging(level=args.log_level)
    try:
        config = load_config(
            args.config,
            sim_root=args.sim.resolve() if args.sim else None,
        )
    except ConfigError as err:
        print(f"nexusd: {err}", file=sys.stderr)  # noqa: T201 - CLI error
        return 2
    return asyncio.run(_run(config))


if __name__ == "__main__":
    sys.exit(main())
