# SPDX-License-Identifier: MIT
"""Follow qubesd: rebuild the registry on every (re)connect, apply events.

When a qube is deleted its containers and every link at either end go. A
qube that reappears under the same name has another uuid, so the reconcile
after a reconnect also drops what was made under the old one: a new qube
inherits nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from nexusd.guests import GuestRegistry, QubeState, parse_quota
from nexusd.qubes.errors import NoSuchQube, QubesError
from nexusd.store import Store
from nexusd.store import containers as sql

__all__ = ["QubesFollower"]

log = structlog.get_logger()

Hook = Callable[[str], Awaitable[None]]
PurgeHook = Callable[[set[str]], Awaitable[None]]

_RUNNING = {"Running", "Transient", "Paused", "Suspended"}
#: Waits between attempts of a reconcile that qubesd failed, in seconds.
RECONCILE_RETRY_FIRST = 0.5
RECONCILE_RETRY_CAP = 30.0


class _Port(Protocol):
    async def list_qubes(self) -> dict[str, Any]: ...
    async def get_tags(self, qube: str) -> frozenset[str]: ...
    async def get_feature(self, qube: str, name: str) -> str | None: ...
    def events(self) -> Any: ...


class QubesFollower:
    """Keeps the registry and the store in step with dom0's qubes."""

    def __init__(
        self,
        port: _Port,
        registry: GuestRegistry,
        store: Store,
        *,
        on_purge: PurgeHook | None = None,
        on_start: Hook | None = None,
    ) -> None:
        """Follow *port*; call *on_purge* with the peers of a purged qube's
        links after its objects went, *on_start* when a qube starts."""
        self._port = port
        self._registry = registry
        self._store = store
        self._on_purge = on_purge
        self._on_start = on_start
        self.reconciled = asyncio.Event()
        self.reconciles = 0
        self.applied = 0

    async def _fetch(self, name: str, info: Any) -> QubeState:
        settings = self._registry.settings
        tags = await self._port.get_tags(name)
        quota = parse_quota(
            untrusted_value=await self._port.get_feature(
                name, settings.quota_feature
            ),
            qube=name,
        )
        return QubeState(
            name=name,
            uuid=str(getattr(info, "uuid", "") or ""),
            klass=str(info.klass),
            running=str(info.power_state) in _RUNNING,
            guest=settings.guest_tag in tags,
            tags=tags,
            quota=quota,
        )

    async def reconcile(self) -> None:
        """Take a fresh domain list and drop what belongs to gone qubes.

        A qube removed between the list and the reads of its tags (nexusd's
        own sweep of a half-made template does that at start) is left out,
        as if the list had been taken a moment later.

        Raises:
            QubesError: qubesd did not answer or refused a call.
        """
        listed = await self._port.list_qubes()
        states = []
        for name, info in sorted(listed.items()):
            try:
                states.append(await self._fetch(name, info))
            except NoSuchQube:
                continue
        self._registry.replace_all(states)
        live = {s.name: s.uuid for s in states}
        known = await self._store.read(sql.qube_uuids)
        for qube, uuids in sorted(known.items()):
            if qube not in live:
                await self._purge(qube, "qube no longer exists")
            elif live[qube] and uuids - {live[qube]}:
                await self._purge(qube, "qube was re-created")
        self.reconciles += 1
        self.reconciled.set()
        log.info(
            "qubes_reconciled",
            qubes=len(states),
            guests=sum(s.guest for s in states),
        )

    async def _reconcile_until_done(self) -> None:
        """Reconcile, retrying with backoff while qubesd fails calls:
        until the first reconcile succeeds nexusd serves nobody."""
        wait = RECONCILE_RETRY_FIRST
        while True:
            try:
                await self.reconcile()
            except QubesError as err:
                log.warning("reconcile_failed", error=err.code, retry_in=wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECONCILE_RETRY_CAP)
            else:
                return

    async def _purge(self, qube: str, reason: str) -> None:
        removed, peers = await self._store.write(
            lambda conn: sql.purge_qube(conn, qube=qube, reason=reason)
        )
        log.info(
            "qube_purged",
            qube=qube,
            reason=reason,
            containers=removed,
            link_peers=len(peers - {qube}),
        )
        if self._on_purge is not None and removed:
            await self._on_purge(peers - {qube})

    async def run(self) -> None:
        """Apply events forever; the port reconnects by itself."""
        async for event in self._port.events():
            try:
                await self.apply(event.subject, event.name, event.kwargs)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event_failed", event_name=event.name)
            self.applied += 1

    async def apply(
        self, subject: str | None, name: str, kwargs: dict[str, str]
    ) -> None:
        """Apply one event from admin.Events."""
        settings = self._registry.settings
        kind, _, detail = name.partition(":")
        if kind == "connection-established":
            await self._reconcile_until_done()
        elif kind == "domain-add" and "vm" in kwargs:
            listed = await self._port.list_qubes()
            info = listed.get(kwargs["vm"])
            if info is not None:
                self._registry.put(await self._fetch(kwargs["vm"], info))
        elif kind == "domain-delete" and "vm" in kwargs:
            self._registry.drop(kwargs["vm"])
            await self._purge(kwargs["vm"], "qube deleted")
        elif subject is None:
            return
        elif kind in {"domain-tag-add", "domain-tag-delete"}:
            state = self._registry.get(subject)
            if state is not None and detail:
                tags = set(state.tags)
                if kind == "domain-tag-add":
                    tags.add(detail)
                else:
                    tags.discard(detail)
                self._registry.update(
                    subject,
                    tags=frozenset(tags),
                    guest=settings.guest_tag in tags,
                )
        elif kind in {"domain-feature-set", "domain-feature-delete"}:
            if detail == settings.quota_feature:
                quota = parse_quota(
                    untrusted_value=kwargs.get("value"), qube=subject
                )
                if kind == "domain-feature-delete":
                    quota = None
                self._registry.update(subject, quota=quota)
        elif kind == "domain-start":
            self._registry.update(subject, running=True)
            if self._on_start is not None:
                await self._on_start(subject)
        elif kind in {"domain-shutdown", "domain-stopped"}:
            self._registry.update(subject, running=False)
