# SPDX-License-Identifier: MIT
"""The benchmark suite's machinery, run with toy sizes.

Nothing here is timed: the tests check that a quick run produces every
figure, that the figures are consistent with each other, and that the
helpers compute what they claim.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.port import BenchPort, BenchQube
from bench.report import check_targets
from bench.seed import Population, seed_root
from bench.stats import growth, percentile, summarize
from nexusd.config import load_config
from nexusd.qubes.port import CONNECTION_ESTABLISHED

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(name="quick_run", scope="module")
def fixture_quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Any], Path]:
    """One ``python -m bench --quick`` for the whole module, as a process
    of its own (the run configures logging for its whole process)."""
    out = tmp_path_factory.mktemp("bench-out")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    result = json.loads((out / "latest.json").read_text(encoding="utf-8"))
    return result, out


class TestQuickRun:
    def test_writes_every_section(
        self, quick_run: tuple[dict[str, Any], Path]
    ) -> None:
        """If a quick run ends, its JSON holds the machine and every
        section, and the Markdown names the machine."""
        result, out = quick_run

        markdown = (out / "latest.md").read_text(encoding="utf-8")

        for key in ("machine", "calls", "scale", "policy", "targets"):
            assert result[key]
        assert result["machine"]["cpu"] in markdown
        assert result["machine"]["python"] in markdown

    def test_call_figures_are_consistent(
        self, quick_run: tuple[dict[str, Any], Path]
    ) -> None:
        """If both servers were called, every call succeeded, p50 <= p99 <=
        max, and each ratio is nexusd's figure over the baseline's."""
        rows = quick_run[0]["calls"]["rows"]

        assert {(r["operation"], r["mode"]) for r in rows} == {
            ("read", "closed"),
            ("read", "paced"),
            ("write", "closed"),
            ("write", "paced"),
        }
        for row in rows:
            for server in ("nexusd", "baseline"):
                figures = row[server]
                assert figures["ok"] > 0
                assert figures["errors"] == {}
                assert 0 < figures["p50_ms"] <= figures["p99_ms"]
                assert figures["p99_ms"] <= figures["max_ms"]
                assert figures["server_cpu_ms_per_call"] >= 0
            assert math.isclose(
                row["ratio"]["p50"],
                row["nexusd"]["p50_ms"] / row["baseline"]["p50_ms"],
            )
            assert math.isclose(
                row["ratio"]["calls_per_s"],
                row["nexusd"]["calls_per_s"] / row["baseline"]["calls_per_s"],
            )

    def test_scale_figures_are_consistent(
        self, quick_run: tuple[dict[str, Any], Path]
    ) -> None:
        """If nexusd ran at each scale point, it was ready before its first
        call, its peak memory is at least its memory, the reconcile was
        also timed through the simulated qubesd, and it exited 0."""
        rows = quick_run[0]["scale"]

        assert [r["links"] for r in rows] == sorted(r["links"] for r in rows)
        for row in rows:
            assert 0 < row["ready_s"] <= row["first_call_s"]
            assert row["hwm_kib"] >= row["rss_kib"] > 0
            assert row["regeneration_s"] > 0
            assert row["reconcile_s"] > 0
            assert row["reconcile_sim_qubesd_s"] > 0
            assert row["read"]["ok"] > 0
            assert row["exit_status"] == 0

    def test_policy_engines_agree(
        self, quick_run: tuple[dict[str, Any], Path]
    ) -> None:
        """If a request matches the first or last link line it is allowed,
        one for no line is denied, by each engine that could be loaded."""
        rows = quick_run[0]["policy"]

        for row in rows:
            assert row["decisions_agree"]
            engines = [row["nexusd"]] + (
                [row["qrexec"]] if row["qrexec"] else []
            )
            for figures in engines:
                assert figures["rules"] > row["links"]
                assert figures["first_line_action"] == "allow"
                assert figures["last_line_action"] == "allow"
                assert figures["no_line_action"] == "deny"

    def test_targets_follow_their_rule(
        self, quick_run: tuple[dict[str, Any], Path]
    ) -> None:
        """If a target is listed, 'met' says whether its figure is on the
        right side of its limit."""
        result = quick_run[0]

        targets = check_targets(result)

        assert targets == result["targets"]
        for target in targets:
            if target["rule"] == "at most":
                expected = target["measured"] <= target["limit"]
            else:
                expected = target["measured"] >= target["limit"]
            assert target["met"] == expected


class TestStats:
    def test_percentile_is_nearest_rank(self) -> None:
        """If 100 sorted values are given, p50 is the 50th and p99 the 99th."""
        values = [float(i) for i in range(1, 101)]

        summary = summarize(list(reversed(values)))

        assert summary.p50 == values[49]
        assert summary.p99 == values[98]
        assert summary.max == values[-1]

    def test_percentile_of_nothing_is_nan(self) -> None:
        """If there are no values, the percentile is NaN, not an error."""
        assert math.isnan(percentile([], 0.5))

    def test_growth_of_proportional_values_is_linear(self) -> None:
        """If values grow as their sizes, the exponent is 1 at each step."""
        sizes = [100, 1000, 10000]

        exponents = growth(sizes, [3.0 * s for s in sizes])

        assert exponents[0] is None
        assert all(math.isclose(e, 1.0) for e in exponents[1:] if e)

    def test_growth_of_constant_values_is_flat(self) -> None:
        """If values do not change with size, the exponent is 0."""
        exponents = growth([10, 100], [5.0, 5.0])

        assert exponents[1] == 0.0


class TestSeed:
    def test_links_join_two_qubes(self, tmp_path: Path) -> None:
        """If a folder is seeded, it holds the asked numbers of containers
        and links, and no link joins a qube to itself."""
        population = Population(qubes=3, containers=6, links=5)

        seed_root(tmp_path, population)

        config = load_config(tmp_path / "nexusd.toml", sim_root=tmp_path)
        conn = sqlite3.connect(config.database)
        try:
            (containers,) = conn.execute(
                "SELECT COUNT(*) FROM containers"
            ).fetchone()
            pairs = conn.execute(
                "SELECT fc.qube, tc.qube FROM links l"
                " JOIN containers fc ON fc.id = l.from_container"
                " JOIN containers tc ON tc.id = l.to_container"
            ).fetchall()
        finally:
            conn.close()
        assert containers == population.containers
        assert len(pairs) == population.links
        assert all(a != b for a, b in pairs)

    def test_too_many_links_are_refused(self, tmp_path: Path) -> None:
        """If more links than containers are asked for, nothing is seeded."""
        with pytest.raises(ValueError, match="container per link"):
            seed_root(tmp_path, Population(qubes=2, containers=2, links=3))

        assert list(tmp_path.iterdir()) == []


class TestBenchPort:
    async def test_reconnect_starts_events_over(self) -> None:
        """If the port is told to reconnect, the events stream yields a
        second connection-established event."""
        port = BenchPort([BenchQube("work", "uuid-work")])
        events = port.events()

        first = await anext(events)
        port.reconnect()
        second = await asyncio.wait_for(anext(events), 5)

        assert first.name == second.name == CONNECTION_ESTABLISHED

    async def test_guests_carry_the_guest_tag(self) -> None:
        """If a qube is a guest it has nexusd's guest tag; dom0 has none."""
        port = BenchPort([BenchQube("work", "uuid-work")])

        assert "nexus-guest" in await port.get_tags("work")
        assert await port.get_tags("dom0") == frozenset()
