# SPDX-License-Identifier: MIT
"""The link services, and what follows a link change: the data-plane policy
file, the shadowing report, and the agents' sync.

``nexus.LinkRequest+CONTAINER.PORT`` and ``nexus.LinkRemove+CONTAINER.PORT``
name the other qube as their qrexec target, as the Admin API does, so an
administrator writes policy in the columns of both qubes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import structlog

from nexusd.agentsync import AgentSync
from nexusd.changes import Change, ChangeFeed
from nexusd.config import Config
from nexusd.errors import BadArgument, BadHeader, Unavailable
from nexusd.guests import GuestRegistry
from nexusd.linkpolicy import SERVICE, LinkLine, LinkPolicyWriter
from nexusd.names import parse_container_name, parse_link_target
from nexusd.policy import Request, SystemInfo, load_policy_set
from nexusd.rpc.server import Call, ServiceSpec
from nexusd.services.payload import parse_json_object, reject_unknown_keys
from nexusd.services.policywatch import PolicyWatch
from nexusd.store import Store
from nexusd.store import containers as csql
from nexusd.store import links as sql

__all__ = ["LinkServices"]

log = structlog.get_logger()

#: Payload cap of the link services (``{"from": NAME}``).
LINK_PAYLOAD = 256
#: Waits between retries of a policy file that could not be written.
REPAIR_FIRST = 0.5
REPAIR_CAP = 30.0


def _parse_from(*, untrusted_payload: bytes) -> str:
    untrusted_obj = parse_json_object(untrusted_payload=untrusted_payload)
    reject_unknown_keys(untrusted_obj, {"from"})
    untrusted_name = untrusted_obj.get("from")
    if not isinstance(untrusted_name, str):
        msg = 'payload must name the caller\'s container: {"from": NAME}'
        raise BadArgument(msg)
    return parse_container_name(untrusted_name=untrusted_name)


class LinkServices:
    """Handlers of the link services and the upkeep after link changes."""

    def __init__(
        self,
        config: Config,
        store: Store,
        registry: GuestRegistry,
        agents: AgentSync | None = None,
        feed: ChangeFeed | None = None,
    ) -> None:
        """Bind to nexusd's state."""
        self._feed = feed or ChangeFeed()
        self._config = config
        self._store = store
        self._registry = registry
        self.agents = agents
        self.writer = LinkPolicyWriter(config)
        self._blocked: dict[LinkLine, str] = {}
        self._policy_signature: tuple[Any, ...] | None = None
        paths = config.paths
        self._watch = PolicyWatch((paths.runtime_policy_dir, paths.policy_dir))
        self._refreshing = 0
        self._refresh_tickets = 0
        self._refresh_kept = 0
        self._sync_lock = asyncio.Lock()
        self._repair: asyncio.Task[None] | None = None

    def specs(self) -> list[ServiceSpec]:
        """The services, for the RPC server."""
        return [
            ServiceSpec(
                "nexus.LinkRequest", self.request, True, True, LINK_PAYLOAD
            ),
            ServiceSpec(
                "nexus.LinkRemove", self.remove, True, True, LINK_PAYLOAD
            ),
        ]

    def _other_qube(self, call: Call) -> str:
        if call.header.target.startswith(("@", "uuid:")):
            msg = f"{call.header.service} must name the other qube as target"
            raise BadHeader(msg)
        if call.header.target in {call.header.source, "dom0"}:
            msg = "the target must be another nexus guest"
            raise BadHeader(msg)
        return call.header.target

    async def request(self, call: Call) -> dict[str, Any]:
        """``nexus.LinkRequest+CONTAINER.PORT`` (target: the other qube)."""
        target = parse_link_target(untrusted_arg=call.header.argument)
        other = self._other_qube(call)
        from_container = _parse_from(untrusted_payload=call.untrusted_payload)

        caller = self._registry.require_guest(call.header.source)
        peer = self._registry.require_guest(other)

        link, created = await self._store.write(
            lambda conn: sql.create_link(
                conn,
                from_qube=caller.name,
                from_container=from_container,
                to_qube=peer.name,
                to_container=target.container,
                port=target.port,
                limit=self._config.limits.links_per_qube,
            )
        )
        if created:
            self._feed.publish(
                Change("link", "added", caller.name, link["id"], link)
            )
            await self.changed({caller.name, peer.name})
        link = _for_guest(await self._annotate(link))
        return {"link": link, "created": created}

    async def remove(self, call: Call) -> dict[str, Any]:
        """``nexus.LinkRemove+CONTAINER.PORT``: either end removes a link."""
        target = parse_link_target(untrusted_arg=call.header.argument)
        other = self._other_qube(call)
        from_container = _parse_from(untrusted_payload=call.untrusted_payload)

        caller = self._registry.require_guest(call.header.source)

        link = await self._store.write(
            lambda conn: sql.remove_link(
                conn,
                caller=caller.name,
                other=other,
                from_container=from_container,
                to_container=target.container,
                port=target.port,
            )
        )
        self._feed.publish(
            Change("link", "removed", link["from"]["qube"], link["id"], link)
        )
        await self.changed({caller.name, other})
        return {"removed": link["id"]}

    async def changed(self, qubes: set[str]) -> None:
        """After links changed: rewrite the policy file, tell the agents.

        Raises:
            Unavailable: the policy file could not be written (see
                :meth:`sync_policy`); the agents are told all the same.
        """
        try:
            await self.sync_policy()
        finally:
            if self.agents is not None:
                self.agents.mark(q for q in qubes if q != "dom0")

    async def lines(self) -> list[LinkLine]:
        """What the data-plane policy must allow, from the database."""
        rows = await self._store.read(sql.all_link_lines)
        return [
            LinkLine(container=c, port=p, source=a, target=b)
            for a, b, c, p in rows
        ]

    async def sync_policy(self) -> bool:
        """Make the policy file equal what the database implies.

        Lines are read and installed under one lock, so a write can never
        install an older reading of the database over a newer one.

        Raises:
            Unavailable: the file could not be written (its folder is full
                or read-only); the database keeps the change, and a repair
                retries in the background until the file is written.
        """
        try:
            async with self._sync_lock:
                changed = await self.writer.install(await self.lines())
        except OSError as err:
            log.error(
                "policy_write_failed",
                path=str(self.writer.path),
                error=err.strerror or type(err).__name__,
            )
            # Fail closed: the old file may still allow a link that is gone.
            # Unlinking needs no space and no descriptor; until the repair
            # writes the file, every nexus.Connect falls to the final deny.
            await asyncio.to_thread(self.writer.withdraw)
            if self._repair is None or self._repair.done():
                self._repair = asyncio.create_task(self._repair_policy())
            msg = (
                "the change is recorded, but the links policy file cannot be"
                " written now; nexusd retries by itself"
            )
            raise Unavailable(msg) from None
        self._policy_signature = None
        return changed

    async def _repair_policy(self) -> None:
        """Retry the policy file, with backoff, until it is written."""
        wait = REPAIR_FIRST
        while True:
            await asyncio.sleep(wait)
            try:
                async with self._sync_lock:
                    await self.writer.install(await self.lines())
            except OSError as err:
                wait = min(wait * 2, REPAIR_CAP)
                log.warning(
                    "policy_repair_failed",
                    error=err.strerror or type(err).__name__,
                    retry_in=wait,
                )
                continue
            self._policy_signature = None
            log.info("policy_repaired", path=str(self.writer.path))
            return

    async def close(self) -> None:
        """Stop a pending repair (the next start rewrites the file)."""
        self._watch.close()
        if self._repair is not None:
            self._repair.cancel()
            await asyncio.gather(self._repair, return_exceptions=True)
            self._repair = None

    async def links_of(self, qube: str) -> list[dict[str, Any]]:
        """The links of *qube*, each with ``blocked_by`` if policy blocks it."""
        links = await self._store.read_cached(
            ("links", qube), lambda c: sql.links_of_qube(c, qube)
        )
        if links:
            await self._refresh_blocked()
        return [self._annotate_now(link) for link in links]

    async def guest_links_of(self, qube: str) -> list[dict[str, Any]]:
        """The links of *qube* as its guest sees them: ``blocked`` says
        whether policy blocks one, but not which dom0 file does."""
        return [_for_guest(link) for link in await self.links_of(qube)]

    async def view(self, qube: str) -> dict[str, Any]:
        """What a guest agent is told: its containers and its links."""
        containers = await self._store.read(
            lambda c: csql.list_containers(c, qube)
        )
        return {
            "qube": qube,
            "containers": containers,
            "links": await self.guest_links_of(qube),
        }

    async def _annotate(self, link: dict[str, Any]) -> dict[str, Any]:
        await self._refresh_blocked()
        return self._annotate_now(link)

    def _annotate_now(self, link: dict[str, Any]) -> dict[str, Any]:
        line = LinkLine(
            container=link["to"]["container"],
            port=link["to"]["port"],
            source=link["from"]["qube"],
            target=link["to"]["qube"],
        )
        return {**link, "blocked_by": self._blocked.get(line)}

    def _signature(self) -> tuple[Any, ...]:
        paths = self._config.paths
        entries: list[Any] = []
        for folder in (paths.runtime_policy_dir, paths.policy_dir):
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        st = entry.stat(follow_symlinks=True)
                        entries.append((entry.path, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                entries.append((str(folder), None))
        return (tuple(sorted(entries)), len(self._registry.names()))

    async def _refresh_blocked(self) -> None:
        current = self._policy_signature
        if (
            not self._refreshing
            and current is not None
            and current[1] == len(self._registry.names())
            and self._watch.quiet()
        ):
            return
        # Armed before the signature is taken: a change after this point is
        # an event for the next call, one before it is in the signature.
        self._watch.arm()
        signature = self._signature()
        if signature == self._policy_signature:
            return
        # Refreshes may overlap (each caller that sees a change computes);
        # the report of the one that started last is kept.
        self._refresh_tickets += 1
        ticket = self._refresh_tickets
        self._refreshing += 1
        try:
            lines = await self.lines()
            blocked = await _shadowed(
                self._config,
                self._registry.system_info(),
                lines,
                self.writer.path,
            )
        except BaseException:
            self._policy_signature = None
            raise
        finally:
            self._refreshing -= 1
        if ticket < self._refresh_kept:
            return
        self._refresh_kept = ticket
        self._blocked = blocked
        self._policy_signature = signature
        for line, where in sorted(self._blocked.items()):
            log.warning(
                "link_blocked",
                source=line.source,
                target=line.target,
                argument=line.argument,
                decided_by=where,
            )


def _for_guest(link: dict[str, Any]) -> dict[str, Any]:
    """*link* without dom0's policy paths (only administrators see them)."""
    shown = {k: v for k, v in link.items() if k != "blocked_by"}
    shown["blocked"] = link.get("blocked_by") is not None
    return shown


async def _shadowed(
    config: Config,
    system: dict[str, Any],
    lines: list[LinkLine],
    ours: Path,
) -> dict[LinkLine, str]:
    """Links whose ``nexus.Connect`` is decided by a rule not in *ours*."""
    paths = config.paths

    def evaluate() -> dict[LinkLine, str]:
        policy = load_policy_set(
            paths.runtime_policy_dir, paths.policy_dir, paths.legacy_policy_dir
        )
        info = SystemInfo.from_dict(system)
        blocked: dict[LinkLine, str] = {}
        for line in lines:
            decision = policy.evaluate(
                Request(
                    service=SERVICE,
                    argument=line.argument,
                    source=line.source,
                    target=line.target,
                ),
                info,
            )
            if decision.file is None:
                blocked[line] = decision.reason
            elif Path(decision.file) != ours or decision.action != "allow":
                blocked[line] = f"{decision.file}:{decision.line}"
        return blocked

    return await asyncio.to_thread(evaluate)
