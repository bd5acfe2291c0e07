# SPDX-License-Identifier: MIT
"""Parse the service descriptor qrexec writes before a call's data.

For a service in dom0, qrexec-daemon writes
``SERVICE+ARG SOURCE name|keyword TARGET`` and a NUL. The source is set by
qrexec and cannot be forged by the guest, so it is the caller's identity;
everything else in the call is the guest's word.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass

from nexusd.errors import BadArgument, BadHeader, UnknownService
from nexusd.names import QubeName, is_qube_name

__all__ = ["ARG_MAX", "HEADER_MAX", "CallHeader", "parse_header"]

#: Longest descriptor nexusd accepts, NUL included. Service names are at
#: most 32 characters, arguments 64, qube names 31, plus separators.
HEADER_MAX = 256
#: Longest service argument (after the ``+``).
ARG_MAX = 64

_SERVICE_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")
_ARG_RE = re.compile(r"\A[A-Za-z0-9_.-]*\Z")
_KEYWORD_RE = re.compile(r"\A[a-z]{1,16}\Z")
_UUID_RE = re.compile(
    r"\Auuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"
)
_DOM0_UUID = "uuid:00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class CallHeader:
    """A parsed service descriptor.

    Attributes:
        service: the service name, one that nexusd serves.
        argument: the text after ``+``; empty when there was none.
        source: the calling qube, as qrexec names it.
        target: the requested target: ``@adminvm`` (or another ``@keyword``)
            or a qube name or ``uuid:...``.
    """

    service: str
    argument: str
    source: QubeName
    target: str

    @property
    def targets_dom0(self) -> bool:
        """Whether the caller named dom0 as the target."""
        return self.target in {"@adminvm", "dom0", _DOM0_UUID}


def parse_header(
    *, untrusted_header: bytes, services: Container[str]
) -> CallHeader:
    """Return the descriptor in *untrusted_header* (without its NUL).

    Raises:
        BadHeader: not four single-space-separated ASCII fields, or a field
            breaks its grammar.
        UnknownService: the service is not one of *services*.
        BadArgument: the argument is too long or has other characters than
            ``[A-Za-z0-9_.-]``.
    """
    if len(untrusted_header) >= HEADER_MAX:
        msg = f"service descriptor longer than {HEADER_MAX - 1} bytes"
        raise BadHeader(msg)
    if not untrusted_header.isascii():
        msg = "service descriptor is not ASCII"
        raise BadHeader(msg)
    untrusted_fields = untrusted_header.decode("ascii").split(" ")
    if len(untrusted_fields) != 4:
        msg = (
            "service descriptor must have 4 space-separated fields,"
            f" got {len(untrusted_fields)}"
        )
        raise BadHeader(msg)
    untrusted_call, untrusted_source, untrusted_type, untrusted_target = (
        untrusted_fields
    )

    untrusted_service, plus, untrusted_arg = untrusted_call.partition("+")
    if not plus or not _SERVICE_RE.match(untrusted_service):
        msg = "first field must be SERVICE+ARGUMENT"
        raise BadHeader(msg)
    if untrusted_service not in services:
        msg = f"no such service: {untrusted_service!r}"
        raise UnknownService(msg)
    service = untrusted_service
    if len(untrusted_arg) > ARG_MAX or not _ARG_RE.match(untrusted_arg):
        msg = f"argument must be at most {ARG_MAX} characters of [A-Za-z0-9_.-]"
        raise BadArgument(msg)
    argument = untrusted_arg

    if not is_qube_name(untrusted_source):
        msg = "source field is not a qube name"
        raise BadHeader(msg)
    source = QubeName(untrusted_source)

    target = _parse_target(untrusted_type, untrusted_target)
    return CallHeader(service, argument, source, target)


def _parse_target(untrusted_type: str, untrusted_target: str) -> str:
    if untrusted_type == "keyword":
        if not _KEYWORD_RE.match(untrusted_target):
            msg = "target keyword must be lowercase letters"
            raise BadHeader(msg)
        return "@" + untrusted_target
    if untrusted_type == "name":
        if is_qube_name(untrusted_target) or _UUID_RE.match(untrusted_target):
            return untrusted_target
        msg = "target field is not a qube name or uuid"
        raise BadHeader(msg)
    msg = "target type must be 'name' or 'keyword'"
    raise BadHeader(msg)
