# SPDX-License-Identifier: MIT
"""Floods from one guest while another keeps calling: the other's calls all
succeed, the flooder is refused with busy or timeout, and nexusd's file
descriptors and memory stay bounded (read from /proc)."""

from __future__ import annotations

import pytest

from reliability.dom0 import Dom0
from reliability.flood import (
    CROWD_HELD,
    LIMITS,
    SERVICE_NOFILE,
    FloodResult,
    judge,
    limit_nofile,
    run_flood,
)

#: Seconds each flood lasts in CI (the long run: python -m reliability
#: flood --seconds 20).
CI_SECONDS = 1.5
#: Short deadlines, so that CI sees slow callers cut off.
CI_LIMITS = {**LIMITS, "header_timeout": 0.5, "payload_timeout": 0.5}
#: Resident memory a flood may add to nexusd, in KiB.
RSS_GROWTH_MAX = 64 * 1024


@pytest.fixture(scope="module")
def dom0(tmp_path_factory: pytest.TempPathFactory):
    dom0 = Dom0(tmp_path_factory.mktemp("flood") / "dom0", limits=CI_LIMITS)
    dom0.create()
    dom0.start_qubesd()
    try:
        limit_nofile(dom0.start_nexusd())
        yield dom0
    finally:
        dom0.close()


class TestFloods:
    @pytest.mark.parametrize("kind", ["storm", "slow", "silent"])
    def test_flood_is_refused_and_others_are_served(
        self, dom0: Dom0, kind: str
    ) -> None:
        """If one guest floods, the other guest's calls all succeed, the
        flooder gets only ok, busy or timeout, and nexusd gives back every
        descriptor and stays far from its limits."""
        result = run_flood(dom0, kind, CI_SECONDS)

        assert result.victim["ok"] > 0
        assert set(result.victim) == {"ok"}
        assert set(result.flooder) <= {"ok", "busy", "timeout"}
        assert result.flooder["busy"] + result.flooder["timeout"] > 0
        assert result.fds_after <= result.fds_before
        assert result.fds_max < SERVICE_NOFILE
        assert result.rss_kib_max - result.rss_kib_before < RSS_GROWTH_MAX
        assert result.violations == []

    @pytest.mark.parametrize("kind", ["slow", "silent"])
    def test_more_connections_than_nexusd_has_descriptors(
        self, dom0: Dom0, kind: str
    ) -> None:
        """If the flooder holds more connections than nexusd may open
        files, nexusd never runs out of descriptors, and the other guest's
        calls all succeed."""
        result = run_flood(dom0, kind, CI_SECONDS, held=CROWD_HELD)

        assert set(result.victim) == {"ok"}
        assert result.fds_max < SERVICE_NOFILE
        assert result.fds_after <= result.fds_before

    def test_nexusd_serves_after_the_floods(self, dom0: Dom0) -> None:
        """If the floods are over, both guests are served as before."""
        for source in ("work", "db"):
            reply = dom0.call("nexus.ContainerList", source=source)

            assert reply.ok, reply


class TestJudge:
    def test_each_broken_promise_is_named(self) -> None:
        """If a flood broke promises, the result names each one."""
        result = FloodResult("storm", fds_before=10, fds_after=12, fds_max=1024)
        result.victim.update({"ok": 3, "busy": 1})
        result.flooder.update({"ok": 5, "internal_error": 1})

        judge(result)

        assert result.violations == [
            "other guest's calls failed: {'busy': 1}",
            "flooder got unclear answers: {'internal_error': 1}",
            "flooder was never refused",
            "descriptors not given back: 10 before, 12 after",
            "descriptors reached the limit (1024)",
        ]
