# SPDX-License-Identifier: MIT
"""Policy cost: a ``nexus.Connect`` request against 100 to 10,000 links.

The set is what dom0 holds: the real Qubes policy files, the shipped
``50-nexus.policy``, and nexusd's runtime file with one line per link,
rendered by nexusd. It is loaded and evaluated with the project's engine
and, when the ``qrexec`` package can be imported, with qrexec's own
parser, in the same run; both must reach the same decisions.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.seed import LINK_PORT, copy_policy, guest_name
from nexusd.linkpolicy import SERVICE, LinkLine, render_links_policy
from nexusd.policy import Request, SystemInfo, load_policy_set
from nexusd.sim.layout import SimLayout

__all__ = ["DEFAULT_SIZES", "PolicySettings", "run_policy"]

DEFAULT_SIZES = (100, 1000, 10000)
#: At most this many qubes carry the links (as in the scale runs).
MAX_QUBES = 1000
#: Each timing batch runs at least this long.
BATCH_S = 0.1


@dataclass(frozen=True)
class PolicySettings:
    """Sizes and repetitions of the policy-cost runs."""

    sizes: Sequence[int] = DEFAULT_SIZES
    repeats: int = 3


def _lines(count: int) -> list[LinkLine]:
    qubes = min(count, MAX_QUBES)
    return [
        LinkLine(
            f"c{i}",
            LINK_PORT,
            guest_name((i + 1) % qubes),
            guest_name(i % qubes),
        )
        for i in range(count)
    ]


def _system(qubes: int) -> dict[str, Any]:
    domains: dict[str, Any] = {
        "dom0": {
            "type": "AdminVM",
            "tags": [],
            "default_dispvm": None,
            "template_for_dispvms": False,
            "power_state": "Running",
            "uuid": "00000000-0000-0000-0000-000000000000",
            "guivm": None,
        }
    }
    for i in range(qubes):
        domains[guest_name(i)] = {
            "type": "AppVM",
            "tags": ["nexus-guest"],
            "default_dispvm": None,
            "template_for_dispvms": False,
            "power_state": "Running",
            "uuid": f"00000000-0000-4000-8000-{i + 1:012d}",
            "guivm": "dom0",
        }
    return {"domains": domains}


def _per_call(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds per call of *fn* over *repeats* batches."""
    fn()
    batches = []
    for _ in range(repeats):
        count = 0
        began = time.perf_counter()
        while True:
            fn()
            count += 1
            took = time.perf_counter() - began
            if took >= BATCH_S:
                break
        batches.append(took / count)
    return statistics.median(batches)


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, Any]:
    samples, value = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        value = fn()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples), value


def _cases(lines: list[LinkLine]) -> dict[str, tuple[str, str, str]]:
    ordered = sorted(lines)
    first, last = ordered[0], ordered[-1]
    return {
        "first_line": (first.argument, first.source, first.target),
        "last_line": (last.argument, last.source, last.target),
        "no_line": ("+nosuch.1", first.source, first.target),
    }


def _ours(
    layout: SimLayout,
    system: dict[str, Any],
    cases: dict[str, tuple[str, str, str]],
    repeats: int,
) -> dict[str, Any]:
    load_s, policy = _timed(
        lambda: load_policy_set(
            layout.runtime_policy_dir,
            layout.policy_dir,
            layout.legacy_policy_dir,
        ),
        repeats,
    )
    if policy.errors:
        msg = f"the bench's policy set does not load: {policy.errors[0]}"
        raise RuntimeError(msg)
    info = SystemInfo.from_dict(system)
    result: dict[str, Any] = {"load_s": load_s, "rules": len(policy.rules)}
    for name, (argument, source, target) in cases.items():

        def evaluate(
            a: str = argument, s: str = source, t: str = target
        ) -> str:
            return str(policy.evaluate(Request(SERVICE, a, s, t), info).action)

        result[f"{name}_s"] = _per_call(evaluate, repeats)
        result[f"{name}_action"] = evaluate()
    return result


def _qrexec_system(system: dict[str, Any]) -> dict[str, Any]:
    domains = {}
    for name, info in system["domains"].items():
        entry = {**info, "name": name}
        domains[name] = entry
        domains["uuid:" + info["uuid"]] = entry
    return {"domains": domains}


def _theirs(
    layout: SimLayout,
    system: dict[str, Any],
    cases: dict[str, tuple[str, str, str]],
    repeats: int,
) -> dict[str, Any] | None:
    try:
        from qrexec.exc import AccessDenied
        from qrexec.policy import parser
        from qrexec.policy.parser_compat import Compat40Loader
    except ImportError:
        return None
    legacy = layout.legacy_policy_dir

    class _Policy(parser.FilePolicy):  # type: ignore[misc]
        # qrexec reads !compat-4.0 files from a fixed /etc path; the bench
        # points it at the simulated dom0's folder instead.
        def handle_compat40(self, *, filepath: Path, lineno: int) -> None:
            loader = Compat40Loader(master=self, legacy_path=legacy)
            loader.execute(filepath=filepath, lineno=lineno)

    # qrexec warns through the root logger about !compat-4.0 at every load.
    logging.disable(logging.WARNING)
    try:
        load_s, policy = _timed(
            lambda: _Policy(
                policy_path=[layout.runtime_policy_dir, layout.policy_dir]
            ),
            repeats,
        )
    finally:
        logging.disable(logging.NOTSET)
    info = _qrexec_system(system)
    result: dict[str, Any] = {"load_s": load_s, "rules": len(policy.rules)}
    for name, (argument, source, target) in cases.items():

        def evaluate(
            a: str = argument, s: str = source, t: str = target
        ) -> str:
            request = parser.Request(SERVICE, a, s, t, system_info=info)
            try:
                policy.evaluate(request)
            except AccessDenied:
                return "deny"
            return "allow"

        result[f"{name}_s"] = _per_call(evaluate, repeats)
        result[f"{name}_action"] = evaluate()
    return result


def run_policy(settings: PolicySettings) -> list[dict[str, Any]]:
    """Load and evaluation cost of each set size, for both engines."""
    rows = []
    for size in settings.sizes:
        with tempfile.TemporaryDirectory(prefix="nexus-bench-policy-") as tmp:
            layout = SimLayout(Path(tmp))
            copy_policy(layout)
            layout.runtime_policy_dir.mkdir(parents=True)
            lines = _lines(size)
            path = layout.runtime_policy_dir / "45-nexus-links.policy"
            path.write_text(render_links_policy(lines), encoding="ascii")
            system = _system(min(size, MAX_QUBES))
            cases = _cases(lines)
            ours = _ours(layout, system, cases, settings.repeats)
            theirs = _theirs(layout, system, cases, settings.repeats)
        agree = theirs is None or all(
            ours[f"{case}_action"] == theirs[f"{case}_action"] for case in cases
        )
        rows.append(
            {
                "links": size,
                "nexusd": ours,
                "qrexec": theirs,
                "decisions_agree": agree,
            }
        )
    return rows
