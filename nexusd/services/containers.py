# SPDX-License-Identifier: MIT
"""The container services: Create, Remove, List and Report.

The caller is always the header's source; a payload never names a qube.
Order in each handler: framing and syntax, then existence and authority,
then the one write transaction, and the reply only after its commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from nexusd.changes import Change, ChangeFeed
from nexusd.config import Config
from nexusd.errors import BadHeader
from nexusd.guests import GuestRegistry
from nexusd.names import parse_container_name
from nexusd.rpc.server import Call, ServiceSpec
from nexusd.services.spec import parse_container_spec, parse_state_report
from nexusd.store import Store
from nexusd.store import containers as sql

__all__ = ["ContainerServices"]

#: Payload cap of services that take only a short JSON object.
SMALL_PAYLOAD = 1024

ChangeHook = Callable[[set[str]], Awaitable[None]]
ListHook = Callable[[str], Awaitable[list[dict[str, Any]]]]


def _require_dom0_target(call: Call) -> None:
    if not call.header.targets_dom0:
        msg = f"{call.header.service} must be called with target @adminvm"
        raise BadHeader(msg)


class ContainerServices:
    """Handlers of the container services, sharing store and registry."""

    def __init__(
        self,
        config: Config,
        store: Store,
        registry: GuestRegistry,
        links_changed: ChangeHook | None = None,
        links_of: ListHook | None = None,
        feed: ChangeFeed | None = None,
    ) -> None:
        """Bind the handlers to nexusd's state; *links_changed* runs after
        a removal took links with it, *links_of* lists a qube's links."""
        self._config = config
        self._store = store
        self._registry = registry
        self._links_changed = links_changed
        self._links_of = links_of
        self._feed = feed or ChangeFeed()

    def specs(self) -> list[ServiceSpec]:
        """The services, for the RPC server."""
        max_payload = self._config.limits.max_payload
        return [
            ServiceSpec(
                "nexus.ContainerCreate", self.create, True, True, max_payload
            ),
            ServiceSpec("nexus.ContainerRemove", self.remove, True, False, 0),
            ServiceSpec("nexus.ContainerList", self.list, False, False, 0),
            ServiceSpec(
                "nexus.ContainerReport", self.report, True, True, SMALL_PAYLOAD
            ),
        ]

    async def create(self, call: Call) -> dict[str, Any]:
        """``nexus.ContainerCreate+NAME``: register a container."""
        _require_dom0_target(call)
        name = parse_container_name(untrusted_name=call.header.argument)
        spec = parse_container_spec(untrusted_payload=call.untrusted_payload)

        qube = self._registry.require_guest(call.header.source)
        limits = self._config.limits
        quota = (
            qube.quota if qube.quota is not None else limits.containers_per_qube
        )

        record, created = await self._store.write(
            lambda conn: sql.create_container(
                conn,
                qube=qube.name,
                qube_uuid=qube.uuid,
                name=name,
                spec=spec,
                quota_qube=quota,
                quota_total=limits.containers_total,
            )
        )
        if created:
            self._feed.publish(
                Change("container", "added", qube.name, name, record)
            )
        return {"container": record, "created": created}

    async def remove(self, call: Call) -> dict[str, Any]:
        """``nexus.ContainerRemove+NAME``: remove it and its links."""
        _require_dom0_target(call)
        name = parse_container_name(untrusted_name=call.header.argument)

        qube = self._registry.require_guest(call.header.source)

        peers = await self._store.write(
            lambda conn: sql.remove_container(
                conn,
                qube=qube.name,
                name=name,
                actor=qube.name,
                via="nexus.ContainerRemove",
            )
        )
        self._feed.publish(Change("container", "removed", qube.name, name))
        if peers and self._links_changed is not None:
            await self._links_changed(peers | {qube.name})
        return {"removed": name, "links_removed": bool(peers)}

    async def list(self, call: Call) -> dict[str, Any]:
        """``nexus.ContainerList``: the caller's containers."""
        _require_dom0_target(call)

        qube = self._registry.require_guest(call.header.source)

        containers = await self._store.read_cached(
            ("containers", qube.name),
            lambda conn: sql.list_containers(conn, qube.name),
        )
        links = []
        if self._links_of is not None:
            links = await self._links_of(qube.name)
        return {"containers": containers, "links": links}

    async def report(self, call: Call) -> dict[str, Any]:
        """``nexus.ContainerReport+NAME``: the guest reports actual state."""
        _require_dom0_target(call)
        name = parse_container_name(untrusted_name=call.header.argument)
        report = parse_state_report(untrusted_payload=call.untrusted_payload)

        qube = self._registry.require_guest(call.header.source)

        record = await self._store.write(
            lambda conn: sql.report_state(
                conn,
                qube=qube.name,
                name=name,
                state=report.state,
                message=report.message,
            )
        )
        self._feed.publish(
            Change("container", "changed", qube.name, name, record)
        )
        return {"container": record}
