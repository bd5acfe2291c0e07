# SPDX-License-Identifier: MIT
"""Every parser of guest and qubesd bytes under Hypothesis, a few examples
each in CI; ``python -m reliability fuzz`` runs the same targets long."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reliability import fuzz
from reliability.fuzz import TARGETS, Target, run_fuzz

#: Examples per target in CI; the long run takes thousands.
CI_EXAMPLES = 60


class TestTargets:
    @pytest.mark.parametrize("name", sorted(TARGETS))
    def test_parser_keeps_its_contract(self, name: str) -> None:
        """If a target's parser gets generated input, it returns only
        values of its grammar and raises only its documented error."""
        target = TARGETS[name]

        run = settings(max_examples=CI_EXAMPLES, deadline=None)(
            given(target.strategy)(target.check)
        )

        run()


class TestReferences:
    @pytest.mark.parametrize(
        ("text", "valid"),
        [
            ("work", True),
            ("a" * 31, True),
            ("a" * 32, False),
            ("Domain-0", False),
            ("sys-net-dm", False),
            ("1work", False),
            ("work\n", False),
            ("wörk", False),
            ("", False),
        ],
    )
    def test_reference_qube_name_states_qubesd_rules(
        self, text: str, valid: bool
    ) -> None:
        """If the reference grammar is asked, it answers as qubesd's
        validate_name does (so the comparison with nexusd means something)."""
        assert fuzz.reference_qube_name(text) is valid

    @pytest.mark.parametrize(
        ("value", "port"),
        [(80, 80), ("80", 80), ("080", None), (True, None), (0, None)],
    )
    def test_reference_port_refuses_what_it_must(
        self, value: object, port: int | None
    ) -> None:
        """If the reference port rule is asked, leading zeros, booleans and
        zero are refused."""
        assert fuzz.reference_port(value) == port


class TestRunner:
    def test_failing_target_is_reported_with_its_input(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If a parser breaks its contract, the run names the target and
        the smallest input Hypothesis found."""

        def check(text: str) -> None:
            assert len(text) < 3

        broken = Target("broken", st.text(max_size=5), check, "a planted bug")
        monkeypatch.setitem(TARGETS, "broken", broken)

        report = run_fuzz(200, only=["broken"])

        assert list(report.failures) == ["broken"]
        assert re.search(r"value='000'", report.failures["broken"])
        assert report.tried["broken"] > 0

    def test_counts_every_input(self) -> None:
        """If a run asks for N inputs over one target, it tries N."""
        report = run_fuzz(50, only=["header_bytes"])

        assert report.failures == {}
        assert report.tried == {"header_bytes": 50}

    def test_unknown_target_is_refused(self) -> None:
        """If --only names no target, the run refuses to start."""
        with pytest.raises(ValueError, match="no such targets: nope"):
            run_fuzz(10, only=["nope"])
