# SPDX-License-Identifier: MIT
"""qubesd's wire grammar: requests nexusd builds, replies it accepts, and
the map from qubesd's exception classes to nexusd's errors."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexusd.errors import Conflict, NexusError, NotFound, OperationError
from nexusd.errors import Unavailable as NexusUnavailable
from nexusd.qubes import (
    BadReply,
    DaemonUnavailable,
    Event,
    FeatureNotFound,
    InvalidValue,
    NoSuchLabel,
    NoSuchProperty,
    NoSuchQube,
    NotHalted,
    NotRunning,
    PermissionDenied,
    PropertyValue,
    QubeExists,
    QubeInUse,
    QubesError,
    TagNotFound,
)
from nexusd.qubes.errors import MESSAGE_MAX, error_from_qubesd
from nexusd.qubes.wire import (
    build_request,
    create_call,
    parse_property,
    parse_reply,
    parse_vm_list,
    parse_volume_info,
    read_event,
)


class TestBuildRequest:
    def test_header_is_qubesadmins(self) -> None:
        """If a call is built, it is METHOD+ARG dom0 name DEST NUL payload."""
        raw = build_request("admin.vm.feature.Set", "work", "x", b"1")

        assert raw == b"admin.vm.feature.Set+x dom0 name work\x001"

    @pytest.mark.parametrize(
        ("method", "dest", "arg"),
        [
            pytest.param("admin.vm.List", "work", "a b", id="space-in-arg"),
            pytest.param("admin.vm.List", "work", "a\x00b", id="nul-in-arg"),
            pytest.param("admin.vm.List", "work", "a\nb", id="newline-in-arg"),
            pytest.param("admin.vm.List", "work", "é", id="non-ascii-arg"),
            pytest.param("admin.vm.List", "work", "x" * 256, id="long-arg"),
            pytest.param("admin.vm.List", "wo rk", "", id="space-in-dest"),
            pytest.param("admin.vm.List", "", "", id="empty-dest"),
            pytest.param("admin.vm.List", "a" * 32, "", id="long-dest"),
            pytest.param("admin vm", "work", "", id="space-in-method"),
            pytest.param("admin.vm+List", "work", "", id="plus-in-method"),
        ],
    )
    def test_unsafe_token_is_refused(
        self, method: str, dest: str, arg: str
    ) -> None:
        """If a token could break the header, the call is not built."""
        with pytest.raises(InvalidValue) as caught:
            build_request(method, dest, arg)

        assert caught.value.code == "invalid_value"

    def test_create_with_pool_uses_create_in_pool(self) -> None:
        """If a pool is given, the method is CreateInPool and pool= follows."""
        method, arg, payload = create_call(
            "TemplateVM", "nixos", "black", None, "lvm"
        )

        assert (method, arg) == ("admin.vm.CreateInPool.TemplateVM", "")
        assert payload == b"name=nixos label=black pool=lvm"

    @pytest.mark.parametrize("klass", ["App VM", "AppVM.x", "", "ÄppVM"])
    def test_create_with_bad_class_is_refused(self, klass: str) -> None:
        """If the class is not plain letters, the creation is not built."""
        with pytest.raises(InvalidValue):
            create_call(klass, "new", "red")


class TestParseReply:
    def test_empty_ok_is_empty_bytes(self) -> None:
        """If qubesd answers ``0\\0``, the value is empty."""
        assert parse_reply(untrusted_reply=b"0\x00") == b""

    def test_error_reply_is_raised_with_class_and_message(self) -> None:
        """If qubesd answers an error, its class picks the nexusd error."""
        reply = b"2\x00QubesVMNotFoundError\x00\x00No such domain: 'x'\x00"

        with pytest.raises(NoSuchQube) as caught:
            parse_reply(untrusted_reply=reply)

        assert caught.value.message == "No such domain: 'x'"
        assert caught.value.qubesd_class == "QubesVMNotFoundError"

    def test_percent_in_message_is_kept(self) -> None:
        """If qubesd's message holds a ``%``, it is kept as is (qubesadmin
        would try to %-format it)."""
        reply = b"2\x00QubesException\x00\x00disk 100% full\x00"

        with pytest.raises(QubesError) as caught:
            parse_reply(untrusted_reply=reply)

        assert caught.value.message == "disk 100% full"

    def test_traceback_field_is_ignored(self) -> None:
        """If qubesd runs with --debug, the traceback does not leak."""
        reply = b"2\x00QubesException\x00Traceback...\x00boom\x00"

        with pytest.raises(QubesError) as caught:
            parse_reply(untrusted_reply=reply)

        assert "Traceback" not in str(caught.value)


WORK = (
    b"work class=AppVM state=Halted uuid=e8bd7c04-5129-5757-8fcd-3fdc4d63256f\n"
)


class TestParseVmList:
    def test_line_without_uuid_is_accepted(self) -> None:
        """If qubesd lists no uuid (older qubesd), uuid is None."""
        listed = parse_vm_list(
            untrusted_text=b"work class=AppVM state=Paused\n"
        )

        assert listed["work"].uuid is None
        assert listed["work"].running

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param(WORK + WORK, id="repeated-name"),
            pytest.param(b"-bad class=AppVM state=Halted\n", id="bad-name"),
            pytest.param(b"work state=Halted\n", id="no-class"),
            pytest.param(b"work class=App-VM state=Halted\n", id="bad-class"),
            pytest.param(b"work class=AppVM state=Flying\n", id="bad-state"),
            pytest.param(
                b"work class=AppVM state=Halted uuid=x\n", id="bad-uuid"
            ),
            pytest.param(
                b"work class=AppVM class=X state=Halted\n", id="repeated-key"
            ),
            pytest.param(
                b"work class=AppVM state=Halted junk\n", id="no-equals"
            ),
            pytest.param(b"work class=AppVM  state=Halted\n", id="two-spaces"),
            pytest.param(WORK[:-1], id="no-newline"),
            pytest.param(b"\n", id="empty-line"),
        ],
    )
    def test_malformed_list_is_refused(self, text: bytes) -> None:
        """If a list line breaks the grammar, the whole list is refused."""
        with pytest.raises(BadReply):
            parse_vm_list(untrusted_text=text)


class TestParseProperty:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (b"default=True type=str ", PropertyValue(True, "str", "")),
            (b"default=True type=int ", PropertyValue(True, "int", None)),
            (
                b"default=False type=bool True",
                PropertyValue(False, "bool", "True"),
            ),
            (b"default=False type=str a b", PropertyValue(False, "str", "a b")),
        ],
    )
    def test_values_by_type(self, text: bytes, expected: PropertyValue) -> None:
        """If a value is empty, it is '' for str and None for other types."""
        assert parse_property(untrusted_text=text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param(b"default=True type=str", id="no-value-field"),
            pytest.param(b"default=yes type=str x", id="bad-default"),
            pytest.param(b"default=True kind=str x", id="no-type"),
            pytest.param(b"default=True type=float 1.0", id="unknown-type"),
            pytest.param(b"default=True type=str \xff", id="not-utf8"),
        ],
    )
    def test_malformed_property_is_refused(self, text: bytes) -> None:
        """If the property text breaks the grammar, BadReply."""
        with pytest.raises(BadReply):
            parse_property(untrusted_text=text)


class TestParseVolumeInfo:
    def test_lines_become_a_dict(self) -> None:
        """If qubesd sends key=value lines, they become a dict."""
        info = parse_volume_info(untrusted_text=b"size=10\nsource=\n")

        assert info == {"size": "10", "source": ""}

    @pytest.mark.parametrize(
        "text", [b"size\n", b"size=1\nsize=2\n", b"a b=1\n"], ids=str
    )
    def test_malformed_info_is_refused(self, text: bytes) -> None:
        """If a line lacks '=', has a bad key or repeats one, BadReply."""
        with pytest.raises(BadReply):
            parse_volume_info(untrusted_text=text)


def _encode(event: Event) -> bytes:
    """qubesd's send_event framing, written independently of wire.py."""
    parts = [b"1", (event.subject or "").encode(), event.name.encode()]
    for key, value in event.kwargs.items():
        parts += [key.encode(), value.encode()]
    return b"\x00".join(parts) + b"\x00\x00"


async def _read_all(data: bytes) -> list[Event | None]:
    reader = asyncio.StreamReader(limit=64 * 1024)
    reader.feed_data(data)
    reader.feed_eof()
    events: list[Event | None] = []
    while (event := await read_event(reader, message_timeout=5)) is not None:
        events.append(event)
    return events


_names = st.from_regex(r"\A[a-z][a-z0-9_.-]{0,20}\Z")
_values = st.text(
    alphabet=st.characters(min_codepoint=1, exclude_categories=["Cs"]),
    max_size=30,
).filter(lambda v: "\x00" not in v)
_events = st.builds(
    Event,
    st.one_of(st.none(), st.sampled_from(["work", "dom0", "nixos-25.05"])),
    st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(:[a-z0-9_.-]{0,20})?\Z"),
    st.dictionaries(_names, _values, max_size=5),
)


class TestReadEvent:
    @given(st.lists(_events, max_size=5))
    def test_encoded_events_read_back(self, events: list[Event]) -> None:
        """If events are framed as qubesd frames them, they read back
        equal and in order."""
        data = b"".join(_encode(e) for e in events)

        assert asyncio.run(_read_all(data)) == events

    async def test_clean_end_is_none(self) -> None:
        """If the stream ends between messages, read_event returns None."""
        assert await _read_all(b"") == []

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b"1", id="half-header"),
            pytest.param(b"1\x00work\x00ev\x00k\x00", id="no-value"),
            pytest.param(b"1\x00work\x00ev\x00k\x00v\x00", id="no-end"),
        ],
    )
    async def test_end_inside_a_message_is_bad_reply(self, data: bytes) -> None:
        """If the stream ends inside a message, BadReply."""
        with pytest.raises(BadReply):
            await _read_all(data)

    async def test_too_many_arguments_is_bad_reply(self) -> None:
        """If an event carries more than the allowed arguments, BadReply."""
        kwargs = {f"k{i}": "v" for i in range(100)}

        with pytest.raises(BadReply):
            await _read_all(_encode(Event("work", "ev", kwargs)))


MAPPING = [
    ("QubesVMNotFoundError", NoSuchQube, "no_such_qube"),
    ("QubesVMAlreadyExistsError", QubeExists, "qube_exists"),
    ("QubesVMInUseError", QubeInUse, "qube_in_use"),
    ("QubesVMNotHaltedError", NotHalted, "qube_not_halted"),
    ("QubesVMNotStartedError", NotRunning, "qube_not_running"),
    ("QubesVMNotRunningError", NotRunning, "qube_not_running"),
    ("QubesFeatureNotFoundError", FeatureNotFound, "feature_not_found"),
    ("QubesTagNotFoundError", TagNotFound, "tag_not_found"),
    ("QubesNoSuchPropertyError", NoSuchProperty, "no_such_property"),
    ("QubesLabelNotFoundError", NoSuchLabel, "no_such_label"),
    ("QubesValueError", InvalidValue, "invalid_value"),
    ("QubesInvalidTagError", InvalidValue, "invalid_value"),
    ("ProtocolError", InvalidValue, "invalid_value"),
    ("PermissionDenied", PermissionDenied, "qubes_permission_denied"),
    ("QubesDaemonAccessError", DaemonUnavailable, "qubesd_unavailable"),
    ("QubesMemoryError", QubesError, "qubes_error"),
]


class TestErrorMap:
    @pytest.mark.parametrize(("name", "cls", "code"), MAPPING)
    def test_qubesd_class_maps_to_nexusd_error(
        self, name: str, cls: type[QubesError], code: str
    ) -> None:
        """If qubesd names a class, the mapped error has nexusd's code,
        keeps the name, and is an OperationError of nexusd's tree."""
        err = error_from_qubesd(name, "text")

        assert type(err) is cls
        assert (err.code, err.qubesd_class, err.message) == (code, name, "text")
        assert isinstance(err, OperationError)
        assert isinstance(err, NexusError)

    def test_families_reach_nexusd_branches(self) -> None:
        """If a caller catches nexusd's NotFound, Conflict or Unavailable,
        the matching qubes errors are caught."""
        assert isinstance(
            error_from_qubesd("QubesVMNotFoundError", ""), NotFound
        )
        assert isinstance(
            error_from_qubesd("QubesVMAlreadyExistsError", ""), Conflict
        )
        assert isinstance(BadReply("x"), NexusUnavailable)

    def test_long_message_is_capped(self) -> None:
        """If qubesd sends a huge message, the error keeps only its start."""
        err = error_from_qubesd("QubesException", "x" * 10_000)

        assert len(err.message) == MESSAGE_MAX
