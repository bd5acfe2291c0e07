# SPDX-License-Identifier: MIT
"""The model of the system's qubes that policy evaluation reads.

It is built from the JSON that qubesd's ``internal.GetSystemInfo`` returns,
with qrexec's aliasing: each qube is also found as ``uuid:UUID``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

__all__ = ["DOM0_NAMES", "Domain", "SystemInfo", "is_dom0"]

#: Every spelling qrexec treats as dom0 (``is_dom0`` in qrexec's parser).
DOM0_NAMES = frozenset(
    {"@adminvm", "dom0", "uuid:00000000-0000-0000-0000-000000000000"}
)


def is_dom0(token: str | None) -> bool:
    """Return whether *token* names dom0 in any of qrexec's spellings."""
    return token in DOM0_NAMES


@dataclass(frozen=True)
class Domain:
    """What policy evaluation needs to know about one qube."""

    name: str
    type: str
    tags: frozenset[str] = frozenset()
    default_dispvm: str | None = None
    template_for_dispvms: bool = False
    power_state: str = "Halted"
    uuid: str | None = None
    internal: bool = False
    #: ``None`` when the system info says the qube has no GuiVM; ``""``
    #: when the system info does not say (then ``ask`` is not refused).
    guivm: str | None = ""


def _opt_str(info: Mapping[str, object], key: str, name: str) -> str | None:
    value = info.get(key)
    if value is None or isinstance(value, str):
        return value
    msg = f"domain {name!r}: {key!r} must be a string"
    raise ValueError(msg)


def _flag(info: Mapping[str, object], key: str, name: str) -> bool:
    value = info.get(key, False)
    if isinstance(value, bool):
        return value
    msg = f"domain {name!r}: {key!r} must be a boolean"
    raise ValueError(msg)


def _tags(info: Mapping[str, object], name: str) -> frozenset[str]:
    value = info.get("tags", [])
    if isinstance(value, list | tuple) and all(
        isinstance(tag, str) for tag in value
    ):
        return frozenset(value)
    msg = f"domain {name!r}: 'tags' must be a list of strings"
    raise ValueError(msg)


def _domain_from_dict(name: str, info: Mapping[str, object]) -> Domain:
    dtype = _opt_str(info, "type", name)
    if dtype is None:
        msg = f"domain {name!r}: 'type' is missing"
        raise ValueError(msg)
    return Domain(
        name=name,
        type=dtype,
        tags=_tags(info, name),
        default_dispvm=_opt_str(info, "default_dispvm", name),
        template_for_dispvms=_flag(info, "template_for_dispvms", name),
        power_state=_opt_str(info, "power_state", name) or "Halted",
        uuid=_opt_str(info, "uuid", name),
        internal=_flag(info, "internal", name),
        guivm=_opt_str(info, "guivm", name) if "guivm" in info else "",
    )


class SystemInfo:
    """The qubes of the system, by name and by ``uuid:UUID``."""

    def __init__(self, domains: Iterable[Domain]) -> None:
        """Index *domains* by name, then alias each under its UUID."""
        self._by_name: dict[str, Domain] = {}
        for domain in domains:
            self._by_name[domain.name] = domain
        self._lookup = dict(self._by_name)
        for domain in self._by_name.values():
            if domain.uuid:
                self._lookup.setdefault(f"uuid:{domain.uuid}", domain)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> SystemInfo:
        """Build from ``{"domains": {name: {...}}}`` as qubesd returns it.

        Keys used: ``type``, ``tags``, ``default_dispvm``,
        ``template_for_dispvms``, ``power_state``, ``uuid``, ``internal``,
        ``guivm``; others are ignored.

        Raises:
            ValueError: the structure or a used key has the wrong type.
        """
        domains = data.get("domains")
        if not isinstance(domains, Mapping):
            msg = "system info must have a 'domains' mapping"
            raise ValueError(msg)
        parsed = []
        for name, info in domains.items():
            if not isinstance(name, str) or not isinstance(info, Mapping):
                msg = "each domain must map a name to a mapping"
                raise ValueError(msg)
            if name.startswith("uuid:"):
                continue
            parsed.append(_domain_from_dict(name, info))
        return cls(parsed)

    def get(self, name: str | None) -> Domain | None:
        """Return the qube called *name* (or ``uuid:UUID``), if any."""
        if name is None:
            return None
        return self._lookup.get(name)

    def __contains__(self, name: object) -> bool:
        """Whether *name* is a qube name or a ``uuid:UUID`` alias."""
        return name in self._lookup

    def names(self) -> Iterator[str]:
        """The qube names (no UUID aliases), in the order given."""
        return iter(self._by_name)

    def domains(self) -> Iterator[Domain]:
        """The qubes, in the order given."""
        return iter(self._by_name.values())

    def to_name(self, token: str) -> str:
        """Return *token* with a ``uuid:`` form replaced by the qube's name.

        Raises:
            KeyError: a ``uuid:`` form names no qube.
        """
        if token.startswith("uuid:"):
            return self._lookup[token].name
        if token.startswith("@dispvm:uuid:"):
            return "@dispvm:" + self._lookup[token[len("@dispvm:") :]].name
        return token
