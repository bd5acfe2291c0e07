# SPDX-License-Identifier: MIT
"""The Admin API port: what nexusd asks of dom0's qubesd, as plain values.

Two implementations follow this interface: ``SocketPort`` speaks qubesd's
socket protocol itself (the simulated dom0, or a real one), and
``QubesadminPort`` goes through the ``qubesadmin`` library in dom0.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "CONNECTION_ESTABLISHED",
    "POWER_STATES",
    "AdminPort",
    "Event",
    "PropertyValue",
    "QubeInfo",
]

#: The first event of every admin.Events connection; nexusd reconciles on it.
CONNECTION_ESTABLISHED = "connection-established"

#: Power states qubesd reports (qubesadmin's ``get_power_state``).
POWER_STATES = frozenset(
    {
        "Halted",
        "Transient",
        "Running",
        "Paused",
        "Suspended",
        "Halting",
        "Dying",
        "Crashed",
        "NA",
    }
)


@dataclass(frozen=True)
class QubeInfo:
    """One line of ``admin.vm.List``.

    Attributes:
        name: the qube's name.
        klass: its class (``AppVM``, ``TemplateVM``, ...).
        power_state: one of :data:`POWER_STATES`.
        uuid: its uuid, when qubesd reports one.
    """

    name: str
    klass: str
    power_state: str
    uuid: str | None = None

    @property
    def running(self) -> bool:
        """Whether the qube is up (qubesadmin's ``is_running``)."""
        return self.power_state in {"Running", "Transient", "Paused"}


@dataclass(frozen=True)
class PropertyValue:
    """A property as ``admin.vm.property.Get`` serialises it.

    Attributes:
        is_default: the value comes from the default, not set on the holder.
        type: qubesd's type word (``str``, ``int``, ``bool``, ``vm``,
            ``label``).
        value: the value as text; ``None`` when unset (an empty ``vm``,
            ``label``, ``int`` or ``bool``); ``""`` for an empty ``str``.
    """

    is_default: bool
    type: str
    value: str | None


@dataclass(frozen=True)
class Event:
    """One event of ``admin.Events``.

    Attributes:
        subject: the qube the event is about, ``None`` for the system.
        name: the event, e.g. ``domain-feature-set:os``; each (re)connection
            starts with :data:`CONNECTION_ESTABLISHED`.
        kwargs: the event's arguments, all as text.
    """

    subject: str | None
    name: str
    kwargs: dict[str, str] = field(default_factory=dict)

    @property
    def is_reconnect(self) -> bool:
        """Whether this marks a fresh connection (events may be missed)."""
        return self.name == CONNECTION_ESTABLISHED


@runtime_checkable
class AdminPort(Protocol):
    """What nexusd needs from qubesd. Every call is one Admin API call or a
    few; errors are those of :mod:`nexusd.qubes.errors`.
    """

    async def list_qubes(self) -> dict[str, QubeInfo]:
        """Every qube, by name, from one ``admin.vm.List``."""
        ...

    async def get_tags(self, qube: str) -> frozenset[str]:
        """The tags of *qube*."""
        ...

    async def add_tag(self, qube: str, tag: str) -> None:
        """Add *tag* to *qube* (no error if present)."""
        ...

    async def remove_tag(self, qube: str, tag: str) -> None:
        """Remove *tag* from *qube*; ``TagNotFound`` if absent."""
        ...

    async def get_feature(self, qube: str, name: str) -> str | None:
        """The feature's value, ``None`` when not set."""
        ...

    async def set_feature(self, qube: str, name: str, value: str) -> None:
        """Set a feature to *value* (``""`` is qubesadmin's ``False``)."""
        ...

    async def remove_feature(self, qube: str, name: str) -> None:
        """Remove a feature; ``FeatureNotFound`` if not set."""
        ...

    async def list_features(self, qube: str) -> dict[str, str]:
        """Every feature set on *qube* itself (not its template)."""
        ...

    async def get_property(self, qube: str, name: str) -> PropertyValue:
        """One property of *qube*."""
        ...

    async def set_property(self, qube: str, name: str, value: str) -> None:
        """Set a property from its text form (``""`` for none)."""
        ...

    async def reset_property(self, qube: str, name: str) -> None:
        """Reset a property to its default."""
        ...

    async def get_global_property(self, name: str) -> PropertyValue:
        """One global property (``default_template``, ...)."""
        ...

    async def set_global_property(self, name: str, value: str) -> None:
        """Set a global property from its text form."""
        ...

    async def create_qube(
        self,
        klass: str,
        name: str,
        label: str,
        template: str | None = None,
        pool: str | None = None,
    ) -> None:
        """Create a qube; ``QubeExists``, ``NoSuchQube`` for the template."""
        ...

    async def remove_qube(self, name: str) -> None:
        """Remove a halted qube; ``QubeInUse``, ``NotHalted``."""
        ...

    async def start(self, name: str) -> None:
        """Start a qube (nothing if it runs already)."""
        ...

    async def shutdown(
        self, name: str, force: bool = False, wait: bool = False
    ) -> None:
        """Shut a qube down; ``NotRunning`` if it is halted."""
        ...

    async def kill(self, name: str) -> None:
        """Kill a qube at once."""
        ...

    async def list_volumes(self, qube: str) -> list[str]:
        """Names of the qube's volumes (``root``, ``private``, ...)."""
        ...

    async def volume_info(self, qube: str, volume: str) -> dict[str, str]:
        """``admin.vm.volume.Info`` as a dict of its ``key=value`` lines."""
        ...

    async def import_volume(
        self,
        qube: str,
        volume: str,
        size: int,
        chunks: AsyncIterator[bytes],
    ) -> None:
        """Stream *size* bytes from *chunks* into a volume of a halted qube."""
        ...

    async def call_service(
        self,
        qube: str,
        service_and_arg: str,
        payload: bytes,
        timeout: float,
    ) -> bytes:
        """Call a qrexec service in a running *qube*; return its output.

        The qube is never started for it (``NotRunning`` when halted).
        """
        ...

    def events(self) -> AsyncIterator[Event]:
        """Follow ``admin.Events`` forever, reconnecting with backoff."""
        ...

    async def close(self) -> None:
        """Release what the port holds; calls after it are not allowed."""
        ...
