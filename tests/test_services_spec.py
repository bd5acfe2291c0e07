# SPDX-License-Identifier: MIT
"""The payload grammars: each refusal says which rule was broken."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexusd.errors import BadPayload
from nexusd.services.spec import (
    ContainerSpec,
    parse_container_spec,
    parse_state_report,
)


class TestContainerSpec:
    @pytest.mark.parametrize(
        ("payload", "fragment"),
        [
            (b'{"ports": [1], "ports": [2]}', "duplicate key"),
            (b'{"ports": [1.5]}', "whole numbers"),
            (b'{"ports": [NaN]}', "NaN"),
            (b'{"ports": ["80"]}', "whole number"),
            (b'{"ports": [' + b"9" * 300 + b"]}", "1 to 65535"),
            (b"[1]", "not a JSON object"),
        ],
    )
    def test_refusal_names_the_rule(
        self, payload: bytes, fragment: str
    ) -> None:
        """If a spec breaks a rule, the message names that rule and does
        not echo the guest's value."""
        with pytest.raises(BadPayload) as caught:
            parse_container_spec(untrusted_payload=payload)

        assert fragment in caught.value.message
        assert "9" * 20 not in caught.value.message

    def test_empty_payload_means_defaults(self) -> None:
        """If the payload is empty, the spec is the default one."""
        assert parse_container_spec(untrusted_payload=b"") == ContainerSpec()

    @given(
        st.lists(st.integers(1, 65535), unique=True, max_size=16),
        st.booleans(),
    )
    def test_canonical_round_trip(self, ports: list[int], auto: bool) -> None:
        """If a valid spec is stored, it reads back equal."""
        spec = parse_container_spec(
            untrusted_payload=ContainerSpec(
                ports=tuple(sorted(ports)), autostart=auto
            )
            .canonical()
            .encode()
        )

        assert ContainerSpec.from_canonical(spec.canonical()) == spec


class TestStateReport:
    def test_valid_report_parses(self) -> None:
        """If the report is well formed, its state and message come back."""
        report = parse_state_report(
            untrusted_payload=b'{"state": "failed", "message": "oom"}'
        )

        assert (report.state, report.message) == ("failed", "oom")
