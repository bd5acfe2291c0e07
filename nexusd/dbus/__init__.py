# SPDX-License-Identifier: MIT
"""nexusd's administrator interface on D-Bus: its fixed names and the
introspection data; this module imports no GLib, so anything may use it."""

from __future__ import annotations

import os
from importlib import resources

__all__ = [
    "ADMIN_GROUP",
    "AUDIT_MAX",
    "BUS_NAME",
    "ENV_ADDRESS",
    "ERROR_PREFIX",
    "INTERFACE",
    "OBJECT_PATH",
    "bus_address",
    "error_name",
    "introspection_xml",
]

BUS_NAME = "org.tesseraqt.Nexus1"
OBJECT_PATH = "/org/tesseraqt/Nexus1"
#: Versioned: an incompatible change gets ``org.tesseraqt.Nexus2``.
INTERFACE = "org.tesseraqt.Nexus1"
#: D-Bus error names are this prefix and nexusd's stable error code.
ERROR_PREFIX = "org.tesseraqt.Nexus1.Error."
#: Names the bus to use instead of the system bus (tests, the demo).
ENV_ADDRESS = "NEXUS_DBUS_ADDRESS"
#: Besides root, members of this group may call methods that change things
#: (in dom0 it already holds qubesd's Admin API socket).
ADMIN_GROUP = "qubes"

#: Most audit records one AuditLog call returns.
AUDIT_MAX = 1000

_XML_NAME = "org.tesseraqt.Nexus1.xml"


def bus_address() -> str | None:
    """The bus address from ``NEXUS_DBUS_ADDRESS``, or None for the system
    bus."""
    return os.environ.get(ENV_ADDRESS) or None


def error_name(code: str) -> str:
    """The D-Bus error name of nexusd's error *code*."""
    return ERROR_PREFIX + code


def introspection_xml() -> str:
    """The interface's introspection XML, shipped as package data."""
    return (resources.files(__name__) / _XML_NAME).read_text(encoding="utf-8")
