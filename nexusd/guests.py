# SPDX-License-Identifier: MIT
"""What nexusd knows of dom0's qubes: which are nexus guests, their quota.

Rebuilt from a fresh domain list on every (re)connect to qubesd and kept
current from ``admin.Events`` in between, so that a call costs no round trip
to qubesd. Until the first list arrives nothing is served.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import structlog

from nexusd.config import QubesSettings
from nexusd.errors import NotManaged, Unavailable

__all__ = ["GuestRegistry", "QubeState", "parse_quota"]

log = structlog.get_logger()

#: Highest per-qube container quota the feature may set.
QUOTA_MAX = 1000


@dataclass(frozen=True)
class QubeState:
    """One qube as nexusd sees it."""

    name: str
    uuid: str
    klass: str
    running: bool
    guest: bool
    quota: int | None
    tags: frozenset[str] = frozenset()


def parse_quota(*, untrusted_value: str | None, qube: str = "") -> int | None:
    """Return the quota feature's value, or None when unset or invalid.

    The feature is set by dom0 (an administrator), but a guest can read it,
    and a template could propagate it, so it is parsed like any input.
    """
    if untrusted_value is None:
        return None
    if (
        not 0 < len(untrusted_value) <= len(str(QUOTA_MAX))
        or not untrusted_value.isascii()
        or not untrusted_value.isdigit()
        or int(untrusted_value) > QUOTA_MAX
    ):
        log.warning(
            "quota_feature_ignored", qube=qube, length=len(untrusted_value)
        )
        return None
    return int(untrusted_value)


class GuestRegistry:
    """The qubes of the machine, as last seen through qubesd."""

    def __init__(self, settings: QubesSettings) -> None:
        """Start empty: not ready until :meth:`replace_all`."""
        self.settings = settings
        self._qubes: dict[str, QubeState] = {}
        self.ready = False

    def replace_all(self, qubes: Iterable[QubeState]) -> None:
        """Take a fresh view of every qube."""
        self._qubes = {q.name: q for q in qubes}
        self.ready = True

    def get(self, name: str) -> QubeState | None:
        """The qube called *name*, if it exists."""
        return self._qubes.get(name)

    def names(self) -> set[str]:
        """Names of every known qube."""
        return set(self._qubes)

    def __iter__(self) -> Iterable[QubeState]:
        """Every known qube."""
        return iter(list(self._qubes.values()))

    def put(self, state: QubeState) -> None:
        """Add or replace one qube."""
        self._qubes[state.name] = state

    def drop(self, name: str) -> QubeState | None:
        """Forget a deleted qube."""
        return self._qubes.pop(name, None)

    def update(self, name: str, **changes: object) -> None:
        """Change fields of a known qube; unknown names are ignored."""
        state = self._qubes.get(name)
        if state is not None:
            self._qubes[name] = replace(state, **changes)  # type: ignore[arg-type]

    def system_info(self) -> dict[str, Any]:
        """The qubes in qrexec's ``get_system_info`` form, for policy."""
        return {
            "domains": {
                q.name: {
                    "type": q.klass,
                    "tags": sorted(q.tags),
                    "default_dispvm": None,
                    "template_for_dispvms": False,
                    "power_state": "Running" if q.running else "Halted",
                    "uuid": q.uuid,
                }
                for q in self._qubes.values()
            }
        }

    def require_guest(self, name: str) -> QubeState:
        """Return the qube *name* if nexusd serves it.

        Raises:
            Unavailable: qubesd has not been reached yet.
            NotManaged: the qube is unknown or lacks the guest tag.
        """
        if not self.ready:
            msg = "nexusd has not reached qubesd yet; try again"
            raise Unavailable(msg)
        state = self._qubes.get(name)
        if state is None or not state.guest:
            msg = (
                f"qube {name!r} is not a nexus guest (tag"
                f" {self.settings.guest_tag!r})"
            )
            raise NotManaged(msg)
        return state
