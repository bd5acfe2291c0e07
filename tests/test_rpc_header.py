# SPDX-License-Identifier: MIT
"""Tests of the qrexec service descriptor parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexusd.errors import BadArgument, BadHeader, NexusError, UnknownService
from nexusd.rpc.header import HEADER_MAX, parse_header

SERVICES = {"nexus.ContainerCreate", "nexus.ContainerList"}


def parse(raw: bytes):
    return parse_header(untrusted_header=raw, services=SERVICES)


class TestParseHeader:
    def test_dom0_keyword_target_parses(self) -> None:
        """If qrexec names @adminvm by keyword, the target is @adminvm."""
        header = parse(b"nexus.ContainerCreate+web work keyword adminvm")

        assert header.service == "nexus.ContainerCreate"
        assert header.argument == "web"
        assert header.source == "work"
        assert header.target == "@adminvm"
        assert header.targets_dom0

    def test_trailing_plus_means_no_argument(self) -> None:
        """If the descriptor ends its service with '+', the argument is ''."""
        header = parse(b"nexus.ContainerList+ work name dom0")

        assert header.argument == ""
        assert header.targets_dom0

    def test_other_qube_target_is_not_dom0(self) -> None:
        """If the target is another qube, targets_dom0 is false."""
        header = parse(b"nexus.ContainerList+ work name db")

        assert header.target == "db"
        assert not header.targets_dom0

    @pytest.mark.parametrize(
        "raw",
        [
            b"nexus.ContainerList+ work name",
            b"nexus.ContainerList+ work name dom0 extra",
            b"nexus.ContainerList+  work name dom0",
            b"nexus.ContainerList work name dom0",
            b"nexus.ContainerList+ w\xc3\xb6rk name dom0",
            b"nexus.ContainerList+ 1work name dom0",
            b"nexus.ContainerList+ work-dm name dom0",
            b"nexus.ContainerList+ work other dom0",
            b"nexus.ContainerList+ work keyword ADMINVM",
            b"nexus.ContainerList+ work name dom0\n",
            b"",
        ],
    )
    def test_malformed_descriptor_is_bad_header(self, raw: bytes) -> None:
        """If a field breaks the grammar, the call is refused as bad_header."""
        with pytest.raises(BadHeader) as caught:
            parse(raw)

        assert caught.value.code == "bad_header"

    def test_unserved_service_is_unknown_service(self) -> None:
        """If the service is not nexusd's, the code is unknown_service."""
        with pytest.raises(UnknownService) as caught:
            parse(b"qubes.VMShell+ work name dom0")

        assert caught.value.code == "unknown_service"

    @pytest.mark.parametrize(
        "arg", [b"a b", b"a+b", b"a\nb", b"x" * 65, b"#", b"@x", b"*"]
    )
    def test_argument_outside_grammar_is_bad_argument(self, arg: bytes) -> None:
        """If the argument has other characters or is long, bad_argument."""
        raw = b"nexus.ContainerCreate+" + arg + b" work name dom0"
        with pytest.raises((BadArgument, BadHeader)) as caught:
            parse(raw)

        assert caught.value.code in {"bad_argument", "bad_header"}

    def test_overlong_descriptor_is_refused(self) -> None:
        """If the descriptor reaches HEADER_MAX bytes, it is refused."""
        raw = b"nexus.ContainerList+ work name " + b"a" * HEADER_MAX
        with pytest.raises(BadHeader):
            parse(raw)

    @given(st.binary(max_size=300))
    def test_random_bytes_raise_only_nexus_errors(self, raw: bytes) -> None:
        """If any bytes arrive, the parser returns or raises a NexusError."""
        try:
            header = parse(raw)
        except NexusError:
            return
        assert header.service in SERVICES
