# SPDX-License-Identifier: MIT
"""Whole hostile calls against a running nexusd: exactly one JSON reply with
a known code each, and a refused call leaves the database as it was."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from reliability.dom0 import Dom0
from reliability.fuzz_socket import CODES, SocketFuzz, calls

#: Calls per CI run (each is a real round trip); the long run makes more.
CI_CALLS = 80


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory):
    dom0 = Dom0(tmp_path_factory.mktemp("fuzz") / "dom0").create()
    try:
        dom0.start_qubesd()
        dom0.start_nexusd()
        assert dom0.wait_serving()
        yield SocketFuzz(dom0)
    finally:
        dom0.close()


class TestSocketFuzz:
    def test_every_call_gets_one_reply_and_refusals_change_nothing(
        self, fuzz: SocketFuzz
    ) -> None:
        """If guests send generated and mutated calls, each gets one JSON
        line, ok or a known code, and no refused call changes a row."""
        run = settings(
            max_examples=CI_CALLS,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )(given(calls())(lambda data: fuzz.check(data)))

        run()

        assert fuzz.calls >= CI_CALLS

    def test_codes_are_the_error_tree(self) -> None:
        """If a code is on the wire it is one of nexusd's error classes',
        so the check above knows every legitimate one."""
        assert {"bad_header", "busy", "unavailable", "not_managed"} <= CODES
        assert "ok" not in CODES
