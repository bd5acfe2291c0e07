# SPDX-License-Identifier: MIT
"""The one exception tree of nexusd, with a stable wire code per class.

Three audiences: ``ProtocolError`` is the caller's bug (a request that does
not parse), ``Denied`` is a refusal on purpose, ``OperationError`` is a
failure whose message is safe to show. Only ``code`` and ``message`` go on
the wire, never the class name or a traceback.
"""

from __future__ import annotations

__all__ = [
    "BadArgument",
    "BadHeader",
    "BadPayload",
    "Busy",
    "Conflict",
    "Denied",
    "InternalError",
    "NexusError",
    "NotFound",
    "NotManaged",
    "OperationError",
    "PayloadTooLarge",
    "ProtocolError",
    "QuotaExceeded",
    "RequestTimeout",
    "ShuttingDown",
    "Unavailable",
    "UnknownService",
    "safe_repr",
]

#: Longest repr of a guest value that an error message may quote.
MAX_QUOTED = 40


def safe_repr(value: object, limit: int = MAX_QUOTED) -> str:
    """Return a capped ``repr`` of *value* for messages and logs.

    The repr escapes control characters, so the result is one printable
    line; values longer than *limit* characters are cut and marked.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 3]}..."


class NexusError(Exception):
    """Root of every error nexusd raises on purpose."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, str]:
        """Return the ``error`` object of a reply."""
        return {"code": self.code, "message": self.message}


class ProtocolError(NexusError, ValueError):
    """The request is malformed: a bug or an attack in the caller."""

    code = "protocol_error"


class BadHeader(ProtocolError):
    """The qrexec service header did not parse."""

    code = "bad_header"


class UnknownService(ProtocolError):
    """The header names a service nexusd does not serve."""

    code = "unknown_service"


class BadArgument(ProtocolError):
    """The service argument (after ``+``) did not parse."""

    code = "bad_argument"


class BadPayload(ProtocolError):
    """The payload did not parse."""

    code = "bad_payload"


class PayloadTooLarge(ProtocolError):
    """The payload was longer than the service accepts."""

    code = "payload_too_large"


class RequestTimeout(ProtocolError):
    """The caller did not send its request within the deadline."""

    code = "timeout"


class Denied(NexusError, PermissionError):
    """The request is well formed but refused."""

    code = "denied"


class NotManaged(Denied):
    """The calling or named qube is not a nexus guest."""

    code = "not_managed"


class QuotaExceeded(Denied):
    """A per-qube or global limit would be exceeded."""

    code = "quota_exceeded"


class Busy(Denied):
    """Too many calls in flight from this source, or in all."""

    code = "busy"


class OperationError(NexusError, RuntimeError):
    """The request failed; the message is safe to show."""

    code = "operation_failed"


class NotFound(OperationError, LookupError):
    """The named object does not exist (for this caller)."""

    code = "not_found"


class Conflict(OperationError):
    """The object exists with a different definition."""

    code = "conflict"


class Unavailable(OperationError):
    """A dependency (qubesd, the database, the disk) is not usable now."""

    code = "unavailable"


class ShuttingDown(OperationError):
    """nexusd is stopping and takes no new work."""

    code = "shutting_down"


class InternalError(OperationError):
    """An unexpected fault; details are in the journal, not on the wire."""

    code = "internal_error"
