# SPDX-License-Identifier: MIT
"""Errors of the Admin API port, and the map from qubesd's class names.

qubesd names its exception class on the wire; :func:`error_from_qubesd`
turns that name into one of the few classes below, each also a member of
nexusd's own tree (``nexusd.errors``), so a caller can catch either.
"""

from __future__ import annotations

from nexusd.errors import Conflict, NotFound, OperationError, Unavailable

__all__ = [
    "BadReply",
    "DaemonUnavailable",
    "FeatureNotFound",
    "InvalidValue",
    "NoSuchLabel",
    "NoSuchProperty",
    "NoSuchQube",
    "NotHalted",
    "NotRunning",
    "PermissionDenied",
    "QubeExists",
    "QubeInUse",
    "QubesError",
    "ServiceCallFailed",
    "TagNotFound",
    "error_from_qubesd",
]

#: Longest qubesd message kept in an error (qubesd quotes values in them).
MESSAGE_MAX = 500


class QubesError(OperationError):
    """qubesd refused or failed a call; ``qubesd_class`` names its error.

    Attributes:
        qubesd_class: qubesd's exception class name, or ``""`` when the
            error arose on this side (connection, framing, local checks).
        message: qubesd's message, capped at :data:`MESSAGE_MAX`.
    """

    code = "qubes_error"

    def __init__(self, message: str, qubesd_class: str = "") -> None:
        """Keep *message* (capped) and qubesd's class name."""
        super().__init__(message[:MESSAGE_MAX])
        self.qubesd_class = qubesd_class


class NoSuchQube(QubesError, NotFound):
    """The qube does not exist (``QubesVMNotFoundError``)."""

    code = "no_such_qube"


class QubeExists(QubesError, Conflict):
    """A qube of that name exists already (``QubesVMAlreadyExistsError``)."""

    code = "qube_exists"


class QubeInUse(QubesError):
    """The qube is used by others or is dom0 (``QubesVMInUseError``)."""

    code = "qube_in_use"


class NotHalted(QubesError):
    """The qube must be halted first (``QubesVMNotHaltedError``)."""

    code = "qube_not_halted"


class NotRunning(QubesError):
    """The qube must be running (``QubesVMNotStartedError`` and kin)."""

    code = "qube_not_running"


class FeatureNotFound(QubesError, NotFound):
    """The feature is not set (``QubesFeatureNotFoundError``)."""

    code = "feature_not_found"


class TagNotFound(QubesError, NotFound):
    """The tag is not set (``QubesTagNotFoundError``)."""

    code = "tag_not_found"


class NoSuchProperty(QubesError, NotFound):
    """The holder has no such property (``QubesNoSuchPropertyError``)."""

    code = "no_such_property"


class NoSuchLabel(QubesError, NotFound):
    """The label does not exist (``QubesLabelNotFoundError``)."""

    code = "no_such_label"


class InvalidValue(QubesError, ValueError):
    """A name or value was refused, by qubesd or before sending it."""

    code = "invalid_value"


class PermissionDenied(QubesError):
    """qubesd refused the call on purpose (``PermissionDenied``)."""

    code = "qubes_permission_denied"


class DaemonUnavailable(QubesError, Unavailable):
    """qubesd could not be reached, did not answer in time, or hung up."""

    code = "qubesd_unavailable"


class BadReply(DaemonUnavailable):
    """qubesd's reply broke the protocol (format, size, encoding)."""

    code = "qubesd_bad_reply"


class ServiceCallFailed(QubesError):
    """A qrexec service inside a qube could not be called or answered."""

    code = "service_call_failed"


_BY_QUBESD_CLASS: dict[str, type[QubesError]] = {
    "QubesVMNotFoundError": NoSuchQube,
    "QubesVMAlreadyExistsError": QubeExists,
    "QubesVMInUseError": QubeInUse,
    "QubesVMNotHaltedError": NotHalted,
    "QubesVMNotStartedError": NotRunning,
    "QubesVMNotRunningError": NotRunning,
    "QubesVMNotPausedError": NotRunning,
    "QubesFeatureNotFoundError": FeatureNotFound,
    "QubesTagNotFoundError": TagNotFound,
    "QubesNoSuchPropertyError": NoSuchProperty,
    "QubesLabelNotFoundError": NoSuchLabel,
    "QubesValueError": InvalidValue,
    "QubesPropertyValueError": InvalidValue,
    "QubesInvalidTagError": InvalidValue,
    "QubesInvalidLabelError": InvalidValue,
    "QubesInvalidLabelValueError": InvalidValue,
    "QubesVMInvalidUUIDError": InvalidValue,
    # qubesd's ProtocolError is its 400: the request nexusd built was refused.
    "ProtocolError": InvalidValue,
    "PermissionDenied": PermissionDenied,
    "QubesDaemonCommunicationError": DaemonUnavailable,
    "QubesDaemonAccessError": DaemonUnavailable,
    "QubesDaemonNoResponseError": DaemonUnavailable,
}


def error_from_qubesd(qubesd_class: str, message: str) -> QubesError:
    """Return the nexusd error for qubesd's class *qubesd_class*.

    Unknown class names give the base :class:`QubesError`, which keeps the
    name in ``qubesd_class``.
    """
    cls = _BY_QUBESD_CLASS.get(qubesd_class, QubesError)
    return cls(message, qubesd_class)
