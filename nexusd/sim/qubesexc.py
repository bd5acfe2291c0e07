# SPDX-License-Identifier: MIT
"""The errors the simulated qubesd raises, named as qubesd names them.

The class name is what goes on the wire (``2\\0<ClassName>\\0\\0<message>\\0``)
and what ``qubesadmin`` maps back onto its own classes, so each class here
carries qubesd's name and builds qubesd's message. ``ProtocolError`` and
``PermissionDenied`` make the server abort the connection after the reply.
"""

from __future__ import annotations

__all__ = [
    "PermissionDenied",
    "ProtocolError",
    "QubesException",
    "QubesFeatureNotFoundError",
    "QubesInvalidLabelError",
    "QubesInvalidTagError",
    "QubesLabelNotFoundError",
    "QubesNoSuchPropertyError",
    "QubesPropertyValueError",
    "QubesTagNotFoundError",
    "QubesVMAlreadyExistsError",
    "QubesVMError",
    "QubesVMInUseError",
    "QubesVMInvalidUUIDError",
    "QubesVMNotFoundError",
    "QubesVMNotHaltedError",
    "QubesVMNotRunningError",
    "QubesVMNotStartedError",
    "QubesValueError",
    "QubesdError",
]


class QubesdError(Exception):
    """Root of every error the simulated qubesd sends as a ``2`` reply."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        """Return the message alone (``KeyError`` would quote it)."""
        return self.message


class QubesException(QubesdError):
    """An error whose message is shown to the user; the reply ends cleanly."""


class ProtocolError(QubesdError):
    """A malformed request (qubesd's 400): replied, then aborted."""


class PermissionDenied(QubesdError):
    """A refused request (qubesd's 403): replied, then aborted."""


class QubesVMNotFoundError(QubesException):
    """The named qube does not exist."""

    def __init__(self, name: str) -> None:
        super().__init__(f"No such domain: {name!r}")


class QubesVMInvalidUUIDError(QubesException):
    """A ``uuid:`` reference that is not a well-formed UUID."""

    def __init__(self, text: str) -> None:
        super().__init__(f"VM UUID is not valid: {text!r}")


class QubesVMAlreadyExistsError(QubesException):
    """A qube of that name exists already."""


class QubesVMError(QubesException):
    """A problem with a qube's state."""


class QubesVMInUseError(QubesVMError):
    """The qube is used by something else and cannot be removed."""

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"Domain is in use: {name!r}")


class QubesVMNotStartedError(QubesVMError):
    """The qube is halted but should be running or paused."""

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"Domain is powered off: {name!r}")


class QubesVMNotRunningError(QubesVMNotStartedError):
    """The qube is not running."""

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(
            name,
            message
            or f"Domain not running (either powered off or paused): {name!r}",
        )


class QubesVMNotHaltedError(QubesVMError):
    """The qube should be halted but is not."""

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"Domain is not powered off: {name!r}")


class QubesValueError(QubesException):
    """A value is invalid or out of bounds."""


class QubesPropertyValueError(QubesValueError):
    """A value given for a property is wrong."""


class QubesNoSuchPropertyError(QubesException):
    """The holder has no property of that name."""

    def __init__(self, holder: str, prop: str) -> None:
        super().__init__(f"Invalid property {prop!r} of {holder}")


class QubesFeatureNotFoundError(QubesException):
    """The feature is not set on the qube."""

    def __init__(self, vm: str, feature: str) -> None:
        super().__init__(f"Feature not set for domain {vm}: {feature}")


class QubesTagNotFoundError(QubesException):
    """The tag is not set on the qube."""

    def __init__(self, vm: str, tag: str) -> None:
        super().__init__(f"Tag not set for domain {vm}: {tag}")


class QubesLabelNotFoundError(QubesException):
    """No label of that name or index."""

    def __init__(self, label: str) -> None:
        super().__init__(f"Label does not exist: {label}")


class QubesInvalidTagError(ProtocolError):
    """A tag outside ``[A-Za-z0-9_-]+`` (a protocol error in qubesd)."""


class QubesInvalidLabelError(ProtocolError):
    """A label name outside qubesd's grammar (a protocol error)."""
