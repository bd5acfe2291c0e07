# SPDX-License-Identifier: MIT
"""What the guests were told: the client-side model a crash run checks the
database against.

Every object is ``present`` (a call that made it was answered ``ok`` and
nothing since tried to remove it), ``absent`` (a removal was answered
``ok``, or a creation was refused) or ``unknown`` (its last call got no
answer, or an answer that does not say whether the change was committed).
After a crash, ``present`` and ``absent`` are promises the database must
keep; ``unknown`` objects take whatever state the database holds.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field

__all__ = [
    "UNCERTAIN_CODES",
    "ContainerKey",
    "LinkKey",
    "Model",
    "State",
]

#: Error codes after which a change may or may not have been committed.
UNCERTAIN_CODES = frozenset(
    {"unavailable", "internal_error", "operation_failed", "shutting_down"}
)


class State(enum.Enum):
    """What the guests were told about one object."""

    PRESENT = "present"
    ABSENT = "absent"
    UNKNOWN = "unknown"


@dataclass(frozen=True, order=True)
class ContainerKey:
    """A container: its qube and name."""

    qube: str
    name: str


@dataclass(frozen=True, order=True)
class LinkKey:
    """A link: from a container to a port of a container in another qube."""

    source: ContainerKey
    target: ContainerKey
    port: int


@dataclass
class Model:
    """The promises made to the guests, shared by the workload's threads.

    Each thread acts on its own objects only, so the order in which one
    thread receives its answers is the order of their commits.
    """

    containers: dict[ContainerKey, State] = field(default_factory=dict)
    ports: dict[ContainerKey, tuple[int, ...]] = field(default_factory=dict)
    links: dict[LinkKey, State] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_container(self, key: ContainerKey, state: State) -> None:
        """Record what a container's last call said; a removed or unknown
        container takes its links with it (into the same state)."""
        with self.lock:
            self.containers[key] = state
            if state is State.PRESENT:
                return
            for link, old in self.links.items():
                if key in (link.source, link.target) and old is not (
                    State.ABSENT
                ):
                    self.links[link] = state

    def set_link(self, key: LinkKey, state: State) -> None:
        """Record what a link's last call said."""
        with self.lock:
            self.links[key] = state

    def present_containers(self, prefix: str) -> list[ContainerKey]:
        """Present containers whose names start with *prefix*, sorted."""
        with self.lock:
            return sorted(
                k
                for k, s in self.containers.items()
                if s is State.PRESENT and k.name.startswith(prefix)
            )

    def present_links(self, prefix: str) -> list[LinkKey]:
        """Present links from containers named with *prefix*, sorted."""
        with self.lock:
            return sorted(
                k
                for k, s in self.links.items()
                if s is State.PRESENT and k.source.name.startswith(prefix)
            )

    def check(
        self,
        db_containers: set[ContainerKey],
        db_links: set[LinkKey],
    ) -> list[str]:
        """Compare with the database; settle unknowns; return violations."""
        violations: list[str] = []
        with self.lock:
            for kind, promised, found in (
                ("container", self.containers, db_containers),
                ("link", self.links, db_links),
            ):
                for key, state in sorted(promised.items()):
                    if state is State.PRESENT and key not in found:
                        violations.append(f"{kind} answered ok is lost: {key}")
                    elif state is State.ABSENT and key in found:
                        violations.append(
                            f"{kind} removed (or refused) is back: {key}"
                        )
                    promised[key] = (
                        State.PRESENT if key in found else State.ABSENT
                    )
                for key in sorted(set(found) - set(promised)):
                    violations.append(f"{kind} nobody asked for: {key}")
        return violations

    def counts(self) -> dict[str, int]:
        """Objects by kind and state."""
        with self.lock:
            counts: dict[str, int] = {}
            for kind, objects in (
                ("container", self.containers),
                ("link", self.links),
            ):
                for state in objects.values():
                    name = f"{kind}s_{state.value}"
                    counts[name] = counts.get(name, 0) + 1
            return counts
