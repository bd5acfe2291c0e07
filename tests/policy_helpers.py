# SPDX-License-Identifier: MIT
"""What the policy loader's tests share: a system, a probe, folders."""

from __future__ import annotations

import shutil
from pathlib import Path

from nexusd.policy import PolicySet, Request, SystemInfo

ZERO = "00000000-0000-0000-0000-000000000000"
SYSTEM = SystemInfo.from_dict(
    {
        "domains": {
            "dom0": {"type": "AdminVM", "uuid": ZERO, "power_state": "Running"},
            "work": {"type": "AppVM", "tags": [], "power_state": "Running"},
            "personal": {"type": "AppVM", "tags": [], "power_state": "Running"},
        }
    }
)
#: A request that the catch-all file below allows.
PROBE = Request("test.Probe", "+", "work", "personal")
ALLOW_ALL = "* * @anyvm @anyvm allow\n"


def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    runtime = tmp_path / "run"
    persistent = tmp_path / "etc"
    legacy = tmp_path / "legacy"
    for folder in (runtime, persistent, legacy):
        folder.mkdir()
    return runtime, persistent, legacy


def decider(policy: PolicySet) -> str | None:
    decision = policy.evaluate(PROBE, SYSTEM)
    return decision.file.name if decision.file else None


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def dom0_layout(tmp_path: Path, shared_dir: Path) -> tuple[Path, Path]:
    """The real files laid out as the dom0 RPMs install them.

    qubes-core-admin's %post links each include/admin-* that a legacy file
    still names into /etc/qubes-rpc/policy/include/ (core-dom0.spec.in), so
    the legacy ``$include:include/admin-local-rwx`` resolves.
    """
    source = shared_dir / "fixtures" / "qubes-policy"
    persistent = tmp_path / "etc" / "qubes" / "policy.d"
    legacy = tmp_path / "etc" / "qubes-rpc" / "policy"
    shutil.copytree(source / "policy.d", persistent)
    shutil.copytree(source / "legacy-qubes-rpc-policy", legacy)
    (legacy / "include").mkdir()
    for name in ("admin-global-ro", "admin-global-rwx"):
        (legacy / "include" / name).symlink_to(
            Path("../../../qubes/policy.d/include") / name
        )
    for name in ("admin-local-ro", "admin-local-rwx"):
        (legacy / "include" / name).symlink_to(
            Path("../../../qubes/policy.d/include") / name
        )
    return persistent, legacy
