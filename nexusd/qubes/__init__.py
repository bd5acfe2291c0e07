# SPDX-License-Identifier: MIT
"""nexusd's port to dom0's Admin API: the interface, its values and errors.

The implementations live in ``socket_port`` (qubesd's socket protocol) and
``qubesadmin_port`` (the ``qubesadmin`` library, dom0 only); import them
from there, so that ``qubesadmin`` is imported only where it is used.
"""

from __future__ import annotations

from nexusd.qubes.errors import (
    BadReply,
    DaemonUnavailable,
    FeatureNotFound,
    InvalidValue,
    NoSuchLabel,
    NoSuchProperty,
    NoSuchQube,
    NotHalted,
    NotRunning,
    PermissionDenied,
    QubeExists,
    QubeInUse,
    QubesError,
    ServiceCallFailed,
    TagNotFound,
)
from nexusd.qubes.port import (
    CONNECTION_ESTABLISHED,
    AdminPort,
    Event,
    PropertyValue,
    QubeInfo,
)

__all__ = [
    "CONNECTION_ESTABLISHED",
    "AdminPort",
    "BadReply",
    "DaemonUnavailable",
    "Event",
    "FeatureNotFound",
    "InvalidValue",
    "NoSuchLabel",
    "NoSuchProperty",
    "NoSuchQube",
    "NotHalted",
    "NotRunning",
    "PermissionDenied",
    "PropertyValue",
    "QubeExists",
    "QubeInUse",
    "QubeInfo",
    "QubesError",
    "ServiceCallFailed",
    "TagNotFound",
]
