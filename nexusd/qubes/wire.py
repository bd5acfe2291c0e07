# SPDX-License-Identifier: MIT
"""qubesd's socket protocol: request headers, replies, events, list texts.

Everything read from the socket is ``untrusted_*`` until a ``parse_*`` here
returns it. Requests are built only from values that pass the grammars
below, so no space, NUL or newline can reach a header or a payload field.
"""

from __future__ import annotations

import asyncio
import re

from nexusd.names import is_qube_name
from nexusd.qubes.errors import BadReply, InvalidValue, error_from_qubesd
from nexusd.qubes.port import POWER_STATES, Event, PropertyValue, QubeInfo

__all__ = [
    "EVENT_FIELDS_MAX",
    "EVENT_MAX",
    "REPLY_MAX",
    "build_request",
    "check_arg",
    "check_dest",
    "check_service",
    "check_token",
    "create_call",
    "decode_text",
    "encode_value",
    "parse_event",
    "parse_lines",
    "parse_names",
    "parse_property",
    "parse_reply",
    "parse_vm_list",
    "parse_volume_info",
    "read_bounded",
    "read_event",
]

#: Largest reply nexusd takes from qubesd (a GetAll of a big machine is
#: tens of KiB; the lists grow by under 200 bytes a qube).
REPLY_MAX = 4 * 1024 * 1024
#: Largest single event message; qubesd's own request cap is 64 KiB.
EVENT_MAX = 64 * 1024
#: Most ``key\0value`` pairs one event may carry.
EVENT_FIELDS_MAX = 64
#: Bytes read from the socket at a time.
CHUNK = 64 * 1024

_OK = b"0\x00"
_EVENT = b"1\x00"
_ERROR = b"2\x00"

#: Method names: ``admin.vm.property.Get``, ``admin.vm.Create.AppVM``.
_METHOD_RE = re.compile(r"\A[A-Za-z][A-Za-z0-9_.]*\Z")
#: Arguments and other header-safe tokens (qrexec's RPC name charset).
_TOKEN_RE = re.compile(r"\A[A-Za-z0-9_.+-]*\Z")
_SERVICE_RE = re.compile(r"\A[A-Za-z0-9_.-]+(\+[A-Za-z0-9_.+-]*)?\Z")
_CLASS_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_UUID_RE = re.compile(r"\A[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\Z")
_EVENT_NAME_RE = re.compile(r"\A[a-z][a-z0-9-]*(:[\x21-\x7e]*)?\Z")
_KEY_RE = re.compile(r"\A[A-Za-z0-9_.-]+\Z")
#: Longest argument, token or service name nexusd sends (qrexec looks
#: services up by file name: NAME_MAX).
TOKEN_MAX = 255
_TYPE_WORDS = frozenset({"str", "int", "bool", "vm", "label"})
_DOM0 = "dom0"


def check_token(what: str, value: str, *, allow_empty: bool = True) -> str:
    """Return *value* if it may stand in a header or ``key=value`` field.

    Raises:
        InvalidValue: empty (unless allowed), too long, or outside
            ``[A-Za-z0-9_.+-]``.
    """
    if (not value and not allow_empty) or len(value) > TOKEN_MAX:
        msg = f"{what} must be 1 to {TOKEN_MAX} characters, got {len(value)}"
        raise InvalidValue(msg)
    if not value.isascii() or _TOKEN_RE.match(value) is None:
        msg = f"{what} must match [A-Za-z0-9_.+-]*"
        raise InvalidValue(msg)
    return value


def check_arg(what: str, value: str) -> str:
    """Return *value* as a non-empty method argument (a tag, a feature...).

    Raises:
        InvalidValue: see :func:`check_token`.
    """
    return check_token(what, value, allow_empty=False)


def encode_value(what: str, value: str) -> bytes:
    """Return *value* as a payload: qubesd takes ASCII values only.

    Raises:
        InvalidValue: *value* is not ASCII.
    """
    if not value.isascii():
        msg = f"{what} must be ASCII"
        raise InvalidValue(msg)
    return value.encode("ascii")


def decode_text(*, untrusted_value: bytes, what: str) -> str:
    """Return a reply's text value.

    Raises:
        BadReply: it is not UTF-8.
    """
    return _decode(untrusted_value, what)


def create_call(
    klass: str,
    name: str,
    label: str,
    template: str | None = None,
    pool: str | None = None,
) -> tuple[str, str, bytes]:
    """Return method, argument and payload of a qube creation.

    ``admin.vm.Create.K`` takes ``name=N label=L``; with a pool it is
    ``admin.vm.CreateInPool.K`` and ``pool=P`` follows. The template, if
    any, is the argument.

    Raises:
        InvalidValue: a malformed class, name, label, template or pool.
    """
    if not klass.isascii() or not klass.isalpha():
        msg = "qube class must be ASCII letters only"
        raise InvalidValue(msg)
    if not is_qube_name(name):
        msg = f"invalid qube name (length {len(name)})"
        raise InvalidValue(msg)
    fields = [f"name={name}", f"label={check_arg('label', label)}"]
    method = f"admin.vm.Create.{klass}"
    if pool is not None:
        method = f"admin.vm.CreateInPool.{klass}"
        fields.append(f"pool={check_arg('pool', pool)}")
    arg = "" if template is None else check_dest(template)
    return method, arg, " ".join(fields).encode("ascii")


def check_service(service_and_arg: str) -> str:
    """Return *service_and_arg* if it is ``SERVICE`` or ``SERVICE+ARG``.

    Raises:
        InvalidValue: too long for a file name, or outside qrexec's charset.
    """
    if (
        len(service_and_arg) > TOKEN_MAX
        or not service_and_arg.isascii()
        or _SERVICE_RE.match(service_and_arg) is None
    ):
        msg = "service must match SERVICE[+ARG] in qrexec's charset"
        raise InvalidValue(msg)
    return service_and_arg


def check_dest(qube: str) -> str:
    """Return *qube* if it is ``dom0`` or a valid qube name.

    Raises:
        InvalidValue: anything else.
    """
    if qube != _DOM0 and not is_qube_name(qube):
        msg = f"invalid qube name (length {len(qube)})"
        raise InvalidValue(msg)
    return qube


def _parse_qube_ref(*, untrusted_name: str, what: str) -> str:
    """Return a qube name qubesd sent, or raise ``BadReply``."""
    if untrusted_name != _DOM0 and not is_qube_name(untrusted_name):
        msg = f"qubesd sent an invalid qube name as {what}"
        raise BadReply(msg)
    return untrusted_name


def build_request(
    method: str, dest: str, arg: str = "", payload: bytes = b""
) -> bytes:
    """Return the bytes of one call: ``METHOD+ARG dom0 name DEST\\0PAYLOAD``.

    Raises:
        InvalidValue: the method, argument or destination is malformed.
    """
    if _METHOD_RE.match(method) is None or len(method) > TOKEN_MAX:
        msg = f"invalid Admin API method (length {len(method)})"
        raise InvalidValue(msg)
    check_token("argument", arg)
    check_dest(dest)
    header = f"{method}+{arg} {_DOM0} name {dest}\x00"
    return header.encode("ascii") + payload


async def read_bounded(
    reader: asyncio.StreamReader, limit: int = REPLY_MAX
) -> bytes:
    """Read to EOF, at most *limit* bytes.

    A reset after an error reply counts as its end: qubesd aborts the
    connection after a ``ProtocolError`` or ``PermissionDenied``.

    Raises:
        BadReply: more than *limit* bytes.
    """
    untrusted_data = bytearray()
    while True:
        try:
            chunk = await reader.read(CHUNK)
        except ConnectionResetError:
            if untrusted_data.startswith(_ERROR):
                break
            raise
        if not chunk:
            break
        untrusted_data += chunk
        if len(untrusted_data) > limit:
            msg = f"qubesd reply longer than {limit} bytes"
            raise BadReply(msg)
    return bytes(untrusted_data)


def _decode(untrusted_field: bytes, what: str) -> str:
    try:
        return untrusted_field.decode("utf-8")
    except UnicodeDecodeError:
        msg = f"qubesd sent {what} that is not UTF-8"
        raise BadReply(msg) from None


def parse_reply(*, untrusted_reply: bytes) -> bytes:
    """Return the value of a ``0`` reply; raise the error of a ``2`` reply.

    Raises:
        DaemonUnavailable: the reply is empty (qubesd aborted the call).
        BadReply: the reply has neither form.
        QubesError: a subclass chosen by qubesd's exception class name.
    """
    if not untrusted_reply:
        msg = "qubesd closed the connection without a reply"
        raise error_from_qubesd("QubesDaemonAccessError", msg)
    if untrusted_reply.startswith(_OK):
        return untrusted_reply[len(_OK) :]
    if not untrusted_reply.startswith(_ERROR):
        msg = f"qubesd reply starts with {untrusted_reply[:2]!r}"
        raise BadReply(msg)
    untrusted_fields = untrusted_reply[len(_ERROR) :].split(b"\x00")
    # CLASS \0 TRACEBACK \0 MESSAGE \0 leaves an empty last field.
    if len(untrusted_fields) != 4 or untrusted_fields[3]:
        msg = f"qubesd error reply has {len(untrusted_fields)} fields, not 4"
        raise BadReply(msg)
    untrusted_class, _, untrusted_message, _ = untrusted_fields
    qubesd_class = _decode(untrusted_class, "an exception class")
    if _CLASS_RE.match(qubesd_class) is None or len(qubesd_class) > 100:
        msg = "qubesd error reply names no valid exception class"
        raise BadReply(msg)
    message = _decode(untrusted_message, "an error message")
    raise error_from_qubesd(qubesd_class, message)


def parse_lines(*, untrusted_text: bytes, what: str) -> list[str]:
    """Return the lines of a ``line\\n``-per-item reply.

    Raises:
        BadReply: not UTF-8, or the last line lacks its newline.
    """
    if not untrusted_text:
        return []
    text = _decode(untrusted_text, what)
    if not text.endswith("\n"):
        msg = f"qubesd {what} does not end with a newline"
        raise BadReply(msg)
    return text[:-1].split("\n")


def _parse_vm_line(untrusted_line: str) -> QubeInfo:
    untrusted_name, *untrusted_pairs = untrusted_line.split(" ")
    name = _parse_qube_ref(untrusted_name=untrusted_name, what="list entry")
    untrusted_attrs: dict[str, str] = {}
    for untrusted_pair in untrusted_pairs:
        untrusted_key, sep, untrusted_value = untrusted_pair.partition("=")
        if (
            not sep
            or _KEY_RE.match(untrusted_key) is None
            or untrusted_key in untrusted_attrs
        ):
            msg = "qubesd listed a malformed key=value pair"
            raise BadReply(msg)
        untrusted_attrs[untrusted_key] = untrusted_value
    return QubeInfo(
        name=name,
        klass=_parse_class(untrusted_klass=untrusted_attrs.get("class", "")),
        power_state=_parse_state(untrusted_state=untrusted_attrs.get("state")),
        uuid=_parse_uuid(untrusted_uuid=untrusted_attrs.get("uuid")),
    )


def _parse_class(*, untrusted_klass: str) -> str:
    if not untrusted_klass.isascii() or not untrusted_klass.isalpha():
        msg = "qubesd listed a qube without a valid class"
        raise BadReply(msg)
    return untrusted_klass


def _parse_state(*, untrusted_state: str | None) -> str:
    if untrusted_state is None or untrusted_state not in POWER_STATES:
        msg = "qubesd listed a qube without a known power state"
        raise BadReply(msg)
    return untrusted_state


def _parse_uuid(*, untrusted_uuid: str | None) -> str | None:
    if untrusted_uuid is not None and _UUID_RE.match(untrusted_uuid) is None:
        msg = "qubesd listed a malformed uuid"
        raise BadReply(msg)
    return untrusted_uuid


def parse_vm_list(*, untrusted_text: bytes) -> dict[str, QubeInfo]:
    """Parse ``admin.vm.List``: ``NAME class=C state=S uuid=U`` lines.

    Raises:
        BadReply: a line breaks that grammar, or a name repeats.
    """
    qubes: dict[str, QubeInfo] = {}
    for untrusted_line in parse_lines(
        untrusted_text=untrusted_text, what="qube list"
    ):
        info = _parse_vm_line(untrusted_line)
        if info.name in qubes:
            msg = "qubesd listed a qube twice"
            raise BadReply(msg)
        qubes[info.name] = info
    return qubes


def parse_names(*, untrusted_text: bytes, what: str) -> list[str]:
    """Parse a ``name\n``-per-line list of tags, features or volumes.

    Raises:
        BadReply: a line is empty or outside ``[A-Za-z0-9_.+-]``.
    """
    names: list[str] = []
    for untrusted_line in parse_lines(untrusted_text=untrusted_text, what=what):
        if not untrusted_line or _TOKEN_RE.match(untrusted_line) is None:
            msg = f"qubesd {what} has a malformed entry"
            raise BadReply(msg)
        names.append(untrusted_line)
    return names


def parse_volume_info(*, untrusted_text: bytes) -> dict[str, str]:
    """Parse ``admin.vm.volume.Info``: one ``key=value`` per line.

    Raises:
        BadReply: a line without ``=``, a malformed or repeated key.
    """
    info: dict[str, str] = {}
    for untrusted_line in parse_lines(
        untrusted_text=untrusted_text, what="volume info"
    ):
        untrusted_key, sep, untrusted_value = untrusted_line.partition("=")
        if not sep or _KEY_RE.match(untrusted_key) is None:
            msg = "qubesd volume info has a malformed line"
            raise BadReply(msg)
        if untrusted_key in info:
            msg = "qubesd volume info repeats a key"
            raise BadReply(msg)
        info[untrusted_key] = untrusted_value
    return info


def parse_property(*, untrusted_text: bytes) -> PropertyValue:
    """Parse ``default=<True|False> type=<T> <value>``.

    An empty value is ``None`` except for ``str``, where it is ``""``.

    Raises:
        BadReply: the text breaks that grammar.
    """
    text = _decode(untrusted_text, "a property")
    untrusted_parts = text.split(" ", 2)
    if len(untrusted_parts) != 3:
        msg = "qubesd property reply lacks default=, type= or value"
        raise BadReply(msg)
    untrusted_default, untrusted_type, value = untrusted_parts
    if untrusted_default not in {"default=True", "default=False"}:
        msg = "qubesd property reply has a malformed default= field"
        raise BadReply(msg)
    type_word = untrusted_type.removeprefix("type=")
    if not untrusted_type.startswith("type=") or type_word not in _TYPE_WORDS:
        msg = "qubesd property reply has a malformed type= field"
        raise BadReply(msg)
    return PropertyValue(
        is_default=untrusted_default == "default=True",
        type=type_word,
        value=None if value == "" and type_word != "str" else value,
    )


def _parse_event_name(*, untrusted_name: str) -> str:
    if _EVENT_NAME_RE.match(untrusted_name) is None:
        msg = f"qubesd event name is malformed (length {len(untrusted_name)})"
        raise BadReply(msg)
    return untrusted_name


def parse_event(*, untrusted_fields: list[bytes]) -> Event:
    """Build an event from the fields after ``1\\0`` (final ``\\0`` dropped).

    Raises:
        BadReply: a field is not UTF-8, the subject is not a qube name, the
            event name or a key is malformed, or a key repeats.
    """
    if len(untrusted_fields) < 2 or len(untrusted_fields) % 2:
        msg = "qubesd event has a field without its pair"
        raise BadReply(msg)
    untrusted_subject = _decode(untrusted_fields[0], "an event subject")
    untrusted_name = _decode(untrusted_fields[1], "an event name")
    subject = None
    if untrusted_subject:
        subject = _parse_qube_ref(
            untrusted_name=untrusted_subject, what="event subject"
        )
    name = _parse_event_name(untrusted_name=untrusted_name)
    kwargs: dict[str, str] = {}
    for i in range(2, len(untrusted_fields), 2):
        key = _decode(untrusted_fields[i], "an event key")
        if _KEY_RE.match(key) is None or key in kwargs:
            msg = "qubesd event key is malformed or repeated"
            raise BadReply(msg)
        kwargs[key] = _decode(untrusted_fields[i + 1], "an event value")
    return Event(subject, name, kwargs)


async def read_event(
    reader: asyncio.StreamReader,
    *,
    message_timeout: float,
    limit: int = EVENT_MAX,
) -> Event | None:
    """Read one event message; ``None`` at a clean end of the stream.

    Waits for the first byte without a deadline (a quiet machine sends
    nothing); the rest of the message must follow within *message_timeout*
    and *limit* bytes. *reader*'s own limit must not exceed *limit*.

    Raises:
        BadReply: not an event, too long, too many fields, or cut short.
        TimeoutError: the message did not complete in time.
    """
    try:
        untrusted_head = await reader.readexactly(len(_EVENT))
    except asyncio.IncompleteReadError as err:
        if not err.partial:
            return None
        msg = "qubesd events stream ended inside a message"
        raise BadReply(msg) from None
    if untrusted_head != _EVENT:
        msg = f"qubesd events stream carries {untrusted_head!r}, not an event"
        raise BadReply(msg)
    untrusted_fields: list[bytes] = []
    size = len(_EVENT)
    async with asyncio.timeout(message_timeout):
        while True:
            try:
                untrusted_field = await reader.readuntil(b"\x00")
            except asyncio.LimitOverrunError:
                msg = f"qubesd event longer than {limit} bytes"
                raise BadReply(msg) from None
            except asyncio.IncompleteReadError:
                msg = "qubesd events stream ended inside a message"
                raise BadReply(msg) from None
            size += len(untrusted_field)
            if size > limit:
                msg = f"qubesd event longer than {limit} bytes"
                raise BadReply(msg)
            # Keys sit at even positions from 2 on; an empty one ends it.
            at_key = (
                len(untrusted_fields) >= 2 and not len(untrusted_fields) % 2
            )
            if at_key and untrusted_field == b"\x00":
                break
            untrusted_fields.append(untrusted_field[:-1])
            if len(untrusted_fields) > 2 + 2 * EVENT_FIELDS_MAX:
                msg = f"qubesd event has over {EVENT_FIELDS_MAX} arguments"
                raise BadReply(msg)
    return parse_event(untrusted_fields=untrusted_fields)
