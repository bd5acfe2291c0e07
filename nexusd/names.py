# SPDX-License-Identifier: MIT
"""Grammars for every name that reaches nexusd from outside.

Each ``parse_*`` takes an ``untrusted_*`` keyword and returns a checked value
or raises; nothing else in nexusd drops the ``untrusted_`` prefix. Only what
passes here may reach a policy file, a log field or the database.
"""

from __future__ import annotations

import re
from typing import NewType

from nexusd.errors import BadArgument

__all__ = [
    "CONTAINER_NAME_MAX",
    "QUBE_NAME_MAX",
    "ContainerName",
    "LinkTarget",
    "QubeName",
    "is_qube_name",
    "parse_container_name",
    "parse_link_target",
    "parse_port",
    "parse_qube_name",
]

QubeName = NewType("QubeName", str)
ContainerName = NewType("ContainerName", str)

#: qubesd: "must be shorter than 32 characters" (qubes/vm/__init__.py).
QUBE_NAME_MAX = 31
_QUBE_RE = re.compile(r"\A[a-zA-Z][a-zA-Z0-9_.-]*\Z")
_QUBE_RESERVED = frozenset({"Domain-0", "none", "default"})

#: Short enough for guest interface names built from it (IFNAMSIZ 16 minus
#: a 4-character prefix and the NUL).
CONTAINER_NAME_MAX = 11
_CONTAINER_RE = re.compile(r"\A[a-z][a-z0-9-]*\Z")

PORT_MIN = 1
PORT_MAX = 65535
_PORT_RE = re.compile(r"\A[1-9][0-9]{0,4}\Z")


def is_qube_name(untrusted_name: str) -> bool:
    """Return whether *untrusted_name* passes qubesd's ``validate_name``."""
    return (
        0 < len(untrusted_name) <= QUBE_NAME_MAX
        and untrusted_name.isascii()
        and _QUBE_RE.match(untrusted_name) is not None
        and untrusted_name not in _QUBE_RESERVED
        and not untrusted_name.endswith("-dm")
    )


def parse_qube_name(*, untrusted_name: str) -> QubeName:
    """Return *untrusted_name* as a qube name, by qubesd's rules.

    Raises:
        BadArgument: the name breaks qubesd's name grammar.
    """
    if not is_qube_name(untrusted_name):
        msg = f"invalid qube name (length {len(untrusted_name)})"
        raise BadArgument(msg)
    return QubeName(untrusted_name)


def parse_container_name(*, untrusted_name: str) -> ContainerName:
    """Return *untrusted_name* as a container name.

    Hostname rules, narrowed: 1 to 11 characters of ``[a-z0-9-]``, starting
    with a letter, not ending with a hyphen.

    Raises:
        BadArgument: the name breaks that grammar.
    """
    if not 0 < len(untrusted_name) <= CONTAINER_NAME_MAX:
        msg = (
            f"container name must be 1 to {CONTAINER_NAME_MAX} characters,"
            f" got {len(untrusted_name)}"
        )
        raise BadArgument(msg)
    if (
        not untrusted_name.isascii()
        or _CONTAINER_RE.match(untrusted_name) is None
        or untrusted_name.endswith("-")
    ):
        msg = (
            "container name must match [a-z][a-z0-9-]* without a trailing"
            " hyphen"
        )
        raise BadArgument(msg)
    return ContainerName(untrusted_name)


def parse_port(*, untrusted_port: object, text: bool = True) -> int:
    """Return *untrusted_port* as a TCP port, from an int or (when *text*)
    decimal text such as a service argument's.

    Raises:
        BadArgument: not a whole number from 1 to 65535 (``bool`` is
            refused even though it is an ``int``).
    """
    if isinstance(untrusted_port, bool):
        msg = "port must be a number, not a boolean"
        raise BadArgument(msg)
    if isinstance(untrusted_port, int):
        value = untrusted_port
    elif (
        text
        and isinstance(untrusted_port, str)
        and _PORT_RE.match(untrusted_port)
    ):
        value = int(untrusted_port)
    else:
        msg = (
            f"port must be a whole number, got {type(untrusted_port).__name__}"
        )
        raise BadArgument(msg)
    if not PORT_MIN <= value <= PORT_MAX:
        msg = f"port must be {PORT_MIN} to {PORT_MAX}"
        raise BadArgument(msg)
    return value


class LinkTarget(tuple[ContainerName, int]):
    """``CONTAINER.PORT``: a port of a container in another qube."""

    __slots__ = ()

    def __new__(cls, container: ContainerName, port: int) -> LinkTarget:
        """Build from parsed parts only."""
        return super().__new__(cls, (container, port))

    @property
    def container(self) -> ContainerName:
        """The container in the target qube."""
        return self[0]

    @property
    def port(self) -> int:
        """The TCP port it offers."""
        return self[1]

    def __str__(self) -> str:
        """Render as the service argument ``CONTAINER.PORT``."""
        return f"{self.container}.{self.port}"


def parse_link_target(*, untrusted_arg: str) -> LinkTarget:
    """Return ``CONTAINER.PORT`` from a service argument.

    Raises:
        BadArgument: no single dot, or either part breaks its grammar.
    """
    untrusted_container, sep, untrusted_port = untrusted_arg.partition(".")
    if not sep or "." in untrusted_port:
        msg = (
            "argument must be CONTAINER.PORT"
            f" (got {len(untrusted_arg)} characters)"
        )
        raise BadArgument(msg)
    container = parse_container_name(untrusted_name=untrusted_container)
    port = parse_port(untrusted_port=untrusted_port)
    return LinkTarget(container, port)
