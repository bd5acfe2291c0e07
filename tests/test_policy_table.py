# SPDX-License-Identifier: MIT
"""Decisions of the real Qubes policy set plus nexusd's own, row by row.

Expected decisions follow qrexec's code (``qrexec/policy/parser.py``): the
first matching rule in file-name order decides; each row names the file and
finds the expected line by its leading words, so the row states intent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nexusd.policy import (
    PolicySet,
    Request,
    SystemInfo,
    load_policy_set,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "policy"
SYSTEM = SystemInfo.from_dict(json.loads((DATA / "system.json").read_text()))


@pytest.fixture(name="dom0", scope="module")
def _dom0(
    tmp_path_factory: pytest.TempPathFactory, shared_dir: Path
) -> tuple[Path, Path]:
    """A fresh R4.2 dom0 policy layout: real files plus nexusd and admin.

    The legacy folder exists but is empty, as qubes-qrexec-dom0 installs it;
    90-admin-default.policy is the real header plus the body that
    qubes-core-admin's generate-admin-policy writes for a few methods.
    """
    root = tmp_path_factory.mktemp("dom0")
    source = shared_dir / "fixtures" / "qubes-policy"
    persistent = root / "etc" / "qubes" / "policy.d"
    runtime = root / "run" / "qubes" / "policy.d"
    legacy = root / "etc" / "qubes-rpc" / "policy"
    shutil.copytree(source / "policy.d", persistent)
    (legacy / "include").mkdir(parents=True)
    runtime.mkdir(parents=True)
    nexus = REPO / "policy" / "50-nexus.policy"
    if not nexus.is_file():
        nexus = DATA / "50-nexus-fallback.policy"
    shutil.copy(nexus, persistent / "50-nexus.policy")
    shutil.copy(DATA / "30-user.policy", persistent / "30-user.policy")
    header = (source / "90-admin-default.policy.header").read_text()
    body = (DATA / "90-admin-default.body").read_text()
    (persistent / "90-admin-default.policy").write_text(header + body)
    with (persistent / "include" / "admin-local-rwx").open("a") as f:
        f.write("mgmt @tag:created-by-mgmt allow,target=dom0\n")
    with (persistent / "include" / "admin-policy-rwx").open("a") as f:
        f.write("mgmt @adminvm allow target=dom0\n")
    shutil.copy(DATA / "45-nexus-links.policy", runtime)
    return runtime, persistent


@pytest.fixture(name="policy", scope="module")
def _policy(dom0: tuple[Path, Path]) -> PolicySet:
    runtime, persistent = dom0
    legacy = persistent.parents[1] / "qubes-rpc" / "policy"
    policy = load_policy_set(runtime, persistent, legacy)
    assert policy.errors == ()
    return policy


def _line_of(path: Path, words: tuple[str, ...]) -> int:
    """The first line of *path* whose words start with *words*."""
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if tuple(line.replace(",", " ").split()[: len(words)]) == words:
            return lineno
    raise AssertionError(f"no line {words!r} in {path}")


def _path_of(dom0: tuple[Path, Path], name: str) -> Path:
    runtime, persistent = dom0
    if (runtime / name).exists():
        return runtime / name
    return persistent / name


_D = "90-default.policy"
_U = "30-user.policy"
_N = "50-nexus.policy"
_BR = "85-admin-backup-restore.policy"
_DD = "91-admin-default-deny.policy"
_LOCAL = "include/admin-local-rwx"
_PRW = "include/admin-policy-rwx"

#: service, argument, source, intended target -> action, target, file,
#: leading words of the deciding line (None: no rule decides).
TABLE = [
    ("qubes.FeaturesRequest", "+", "work", "dom0", "allow", "dom0", _D,
     ("qubes.FeaturesRequest",)),
    ("qubes.FeaturesRequest", "+", "work", "@adminvm", "allow", "dom0", _D,
     ("qubes.FeaturesRequest",)),
    ("qubes.FeaturesRequest", "+", "work", "@default", "deny", None, None,
     None),
    ("qubes.FeaturesRequest", "+", "dom0", "dom0", "deny", None, None, None),
    ("qubes.NotifyTools", "+", "fedora-42", "dom0", "allow", "dom0", _D,
     ("qubes.NotifyTools",)),
    ("qubes.Filecopy", "+", "work", "@default", "ask", None, _D,
     ("qubes.Filecopy",)),
    ("qubes.Filecopy", "+", "work", "personal", "ask", "personal", _U,
     ("qubes.Filecopy", "*", "work", "personal")),
    ("qubes.Filecopy", "+", "work", "vault", "deny", None, _U,
     ("qubes.Filecopy", "*", "work", "vault")),
    ("qubes.Filecopy", "+", "work", "dom0", "deny", None, None, None),
    ("qubes.GetDate", "+", "untrusted", "@default", "deny", None, _D,
     ("qubes.GetDate", "*", "@tag:anon-vm")),
    ("qubes.GetDate", "+", "work", "@default", "allow", "dom0", _D,
     ("qubes.GetDate", "*", "@anyvm")),
    ("qubes.GetDate", "+", "work", "ghost", "allow", "dom0", _D,
     ("qubes.GetDate", "*", "@anyvm")),
    ("qubes.GetRandomizedTime", "+", "work", "dom0", "allow", "dom0", _D,
     ("qubes.GetRandomizedTime",)),
    ("qubes.OpenInVM", "+", "work", "@dispvm", "allow", "@dispvm:default-dvm",
     _D, ("qubes.OpenInVM", "*", "@anyvm", "@dispvm")),
    ("qubes.OpenInVM", "+", "untrusted", "@dispvm", "deny", None, _D,
     ("qubes.OpenInVM", "*", "@anyvm", "@dispvm")),
    ("qubes.OpenInVM", "+", "work", "@dispvm:default-dvm", "ask", None, _D,
     ("qubes.OpenInVM", "*", "@anyvm", "@anyvm")),
    ("qubes.OpenInVM", "+", "work", "@dispvm:personal", "deny", None, None,
     None),
    ("qubes.OpenURL", "+", "work", "personal", "ask", None, _D,
     ("qubes.OpenURL", "*", "@anyvm", "@anyvm")),
    ("qubes.StartApp", "+firefox", "personal", "@dispvm", "allow",
     "@dispvm:default-dvm", _D, ("qubes.StartApp", "*", "@anyvm", "@dispvm")),
    ("qubes.UpdatesProxy", "+", "whonix-gw-17", "@default", "allow",
     "sys-whonix", _D, ("qubes.UpdatesProxy", "*", "@tag:whonix-updatevm")),
    ("qubes.UpdatesProxy", "+", "whonix-gw-17", "sys-net", "deny", None, _D,
     ("qubes.UpdatesProxy", "*", "@tag:whonix-updatevm", "@anyvm")),
    ("qubes.UpdatesProxy", "+", "fedora-42", "@default", "allow", "sys-net",
     _D, ("qubes.UpdatesProxy", "*", "@type:TemplateVM")),
    ("qubes.UpdatesProxy", "+", "work", "@default", "deny", None, _D,
     ("qubes.UpdatesProxy", "*", "@anyvm", "@anyvm")),
    ("qubes.VMShell", "+", "work", "@dispvm", "allow", "@dispvm:default-dvm",
     _D, ("qubes.VMShell", "*", "@anyvm", "@dispvm")),
    ("qubes.VMShell", "+", "work", "personal", "deny", None, _D,
     ("qubes.VMShell", "*", "@anyvm", "@anyvm")),
    ("qubes.VMRootShell", "+", "work", "personal", "deny", None, _D,
     ("qubes.VMRootShell",)),
    ("qubes.ConnectTCP", "+22", "work", "personal", "deny", None, _D,
     ("qubes.ConnectTCP",)),
    ("qubes.Notifications", "+", "work", "@default", "allow", "dom0", _D,
     ("qubes.Notifications",)),
    ("qubes.Notifications", "+", "work", "personal", "deny", None, None, None),
    ("qubes.RestoreById", "+", "restorer", "backup-store", "allow",
     "backup-store", _BR, ("qubes.RestoreById",)),
    ("policy.RegisterArgument", "+x", "work", "dom0", "deny", None, _D,
     ("policy.RegisterArgument", "*", "@anyvm", "dom0")),
    ("policy.List", "+", "mgmt", "@adminvm", "allow", "dom0", _PRW,
     ("mgmt",)),
    ("policy.Replace", "+30-user", "mgmt", "@adminvm", "allow", "dom0", _PRW,
     ("mgmt",)),
    ("policy.Get", "+30-user", "work", "@adminvm", "deny", None, None, None),
    ("admin.vm.List", "+", "mgmt", "@adminvm", "allow", "dom0", _U,
     ("admin.vm.List", "*", "mgmt", "@adminvm")),
    ("admin.vm.List", "+", "mgmt", "work", "allow", "dom0", _U,
     ("admin.vm.List", "*", "mgmt", "@anyvm")),
    ("admin.vm.List", "+", "restorer", "@adminvm", "allow", "dom0", _BR,
     ("admin.vm.List", "*", "@tag:backup-restore-mgmt", "dom0")),
    ("admin.vm.List", "+", "work", "@adminvm", "deny", None, None, None),
    ("admin.vm.List", "+", "dom0", "@adminvm", "deny", None, None, None),
    ("admin.vm.property.GetAll", "+", "work", "personal", "deny", None, _DD,
     ("admin.vm.property.GetAll", "*", "@anyvm", "@anyvm")),
    ("admin.vm.property.GetAll", "+", "work", "@adminvm", "deny", None, _DD,
     ("admin.vm.property.GetAll", "*", "@anyvm", "@adminvm")),
    ("admin.property.GetAll", "+", "work", "dom0", "deny", None, _DD,
     ("admin.property.GetAll", "*", "@anyvm", "@adminvm")),
    ("admin.vm.Start", "+", "mgmt", "created-vm", "allow", "dom0", _LOCAL,
     ("mgmt",)),
    ("admin.vm.property.Get", "+netvm", "mgmt", "created-vm", "allow", "dom0",
     _LOCAL, ("mgmt",)),
    ("admin.vm.Start", "+", "mgmt", "work", "deny", None, None, None),
    ("admin.vm.feature.Set", "+gui", "restorer", "restoring", "allow", "dom0",
     _BR, ("admin.vm.feature.Set",)),
    ("nexus.ContainerCreate", "+web", "work", "@adminvm", "allow", "dom0", _N,
     ("nexus.ContainerCreate", "*", "@tag:nexus-guest")),
    ("nexus.ContainerCreate", "+web", "personal", "@adminvm", "deny", None,
     _N, ("nexus.ContainerCreate", "*", "@anyvm", "@adminvm")),
    ("nexus.ContainerList", "+", "work", "@adminvm", "allow", "dom0", _N,
     ("nexus.ContainerList", "+")),
    ("nexus.ContainerList", "+x", "work", "@adminvm", "deny", None, _N,
     ("nexus.ContainerList", "*", "@anyvm", "@adminvm")),
    ("nexus.LinkRequest", "+postgres.5432", "work", "db", "allow", "dom0", _U,
     ("nexus.LinkRequest", "+postgres.5432")),
    ("nexus.LinkRequest", "+redis.6379", "work", "db", "deny", None, _N,
     ("nexus.LinkRequest", "*", "@anyvm", "@anyvm")),
    ("nexus.LinkRequest", "+web.80", "work", "personal", "ask", None, _U,
     ("nexus.LinkRequest", "*", "work", "personal")),
    ("nexus.LinkRequest", "+web.80", "untrusted", "work", "deny", None, _U,
     ("nexus.LinkRequest", "*", "untrusted")),
    ("nexus.LinkRequest", "+postgres.5432", "work", "ghost", "deny", None, _N,
     ("nexus.LinkRequest", "*", "@anyvm", "@anyvm")),
    ("nexus.Connect", "+postgres.5432", "work", "db", "allow", "db",
     "45-nexus-links.policy", ("nexus.Connect",)),
    ("nexus.Connect", "+postgres.5432", "db", "work", "deny", None, _N,
     ("nexus.Connect", "*", "@anyvm", "@anyvm")),
    ("nexus.LinkRemove", "+postgres.5432", "work", "db", "allow", "dom0", _N,
     ("nexus.LinkRemove", "*", "@tag:nexus-guest")),
    ("test.Gpg", "+", "work", "vault", "deny", None, _U,
     ("test.Gpg", "*", "work", "vault")),
    ("test.Gpg", "+", "work", "personal", "allow", "personal", _U,
     ("test.Gpg", "*", "work", "@anyvm")),
    ("test.Loop", "+", "work", "work", "deny", None, _U, ("test.Loop",)),
    ("test.Uuid", "+", "work", "dom0", "allow", "dom0", _U, ("test.Uuid",)),
    ("test.Uuid", "+", "personal", "dom0", "deny", None, None, None),
    ("test.Ask", "+", "headless", "personal", "deny", None, _U, ("test.Ask",)),
    ("test.PdfConvert", "+", "work", "@dispvm", "allow", "@dispvm:default-dvm",
     _U, ("test.PdfConvert",)),
    ("test.Redirect", "+", "work", "@default", "allow", "@dispvm:default-dvm",
     _U, ("test.Redirect",)),
    ("test.RedirectGhost", "+", "work", "personal", "deny", None, _U,
     ("test.RedirectGhost",)),
    ("test.User", "+", "work", "@adminvm", "allow", "dom0", _U,
     ("test.User",)),
    ("test.DispName", "+", "work", "@dispvm", "allow", "@dispvm:default-dvm",
     _U, ("test.DispName",)),
    ("test.DispName", "+", "untrusted", "@dispvm", "deny", None, None, None),
]  # fmt: skip


class TestRealSetTable:
    """Decisions of the real set plus nexusd's file and an admin's file."""

    def test_table_is_large_enough(self) -> None:
        """If the table shrank below 40 requests, the issue is not met."""
        assert len(TABLE) >= 40

    @pytest.mark.parametrize(
        ("service", "argument", "source", "target", "action", "resolved",
         "name", "words"),
        TABLE,
        ids=[f"{r[0]}{r[1]}:{r[2]}->{r[3]}" for r in TABLE],
    )  # fmt: skip
    def test_decision_matches_qrexec(
        self,
        policy: PolicySet,
        dom0: tuple[Path, Path],
        service: str,
        argument: str,
        source: str,
        target: str,
        action: str,
        resolved: str | None,
        name: str | None,
        words: tuple[str, ...] | None,
    ) -> None:
        """If a request is evaluated, action, target, file and line match."""
        decision = policy.evaluate(
            Request(service, argument, source, target), SYSTEM
        )

        assert (decision.action, decision.target) == (action, resolved), (
            decision.reason
        )
        if name is None or words is None:
            assert (decision.file, decision.line) == (None, None)
        else:
            path = _path_of(dom0, name)
            assert decision.file is not None
            assert decision.file.resolve() == path.resolve()
            assert decision.line == _line_of(path, words)


def _legacy_layout(root: Path, shared_dir: Path) -> tuple[Path, Path]:
    source = shared_dir / "fixtures" / "qubes-policy"
    persistent = root / "etc" / "qubes" / "policy.d"
    legacy = root / "etc" / "qubes-rpc" / "policy"
    shutil.copytree(source / "policy.d", persistent)
    shutil.copytree(source / "legacy-qubes-rpc-policy", legacy)
    (legacy / "include").mkdir()
    for name in ("admin-local-ro", "admin-local-rwx"):
        (legacy / "include" / name).symlink_to(
            Path("../../../qubes/policy.d/include") / name
        )
    with (persistent / "include" / "admin-local-rwx").open("a") as f:
        f.write("mgmt @tag:created-by-mgmt allow,target=dom0\n")
    return persistent, legacy


#: Upgraded dom0: legacy per-service files are read by 35-compat.policy,
#: which sorts before 90-default.policy, so they decide first. The words
#: locating a line are as written in the file (old syntax uses ``$``).
COMPAT_TABLE = [
    ("qubes.Filecopy", "work", "personal", "ask", None, "qubes.Filecopy",
     ("$anyvm", "$anyvm", "ask")),
    ("qubes.GetDate", "untrusted", "@default", "deny", None, "qubes.GetDate",
     ("$tag:anon-vm",)),
    ("qubes.GetDate", "work", "@default", "allow", "dom0", "qubes.GetDate",
     ("$anyvm", "$anyvm", "allow")),
    ("qubes.OpenInVM", "work", "@dispvm", "allow", "@dispvm:default-dvm",
     "qubes.OpenInVM", ("$anyvm", "$dispvm")),
    ("qubes.FeaturesRequest", "work", "dom0", "allow", "dom0",
     "qubes.FeaturesRequest", ("$anyvm", "dom0")),
    ("qubes.UpdatesProxy", "fedora-42", "@default", "allow", "sys-net",
     "90-default.policy", ("qubes.UpdatesProxy", "*", "@type:TemplateVM")),
    ("policy.RegisterArgument", "work", "dom0", "deny", None,
     "90-default.policy", ("policy.RegisterArgument", "*", "@anyvm", "dom0")),
    ("admin.vm.volume.Import", "mgmt", "created-vm", "allow", "dom0",
     "include/admin-local-rwx", ("mgmt",)),
]  # fmt: skip


class TestCompatTable:
    """Decisions of an upgraded dom0 with the legacy files in place."""

    @pytest.mark.parametrize(
        ("service", "source", "target", "action", "resolved", "name", "words"),
        COMPAT_TABLE,
        ids=[f"{r[0]}:{r[1]}->{r[2]}" for r in COMPAT_TABLE],
    )
    def test_decision_matches_qrexec(
        self,
        tmp_path: Path,
        shared_dir: Path,
        service: str,
        source: str,
        target: str,
        action: str,
        resolved: str | None,
        name: str,
        words: tuple[str, ...],
    ) -> None:
        """If legacy files exist, compat rules decide where qrexec says."""
        persistent, legacy = _legacy_layout(tmp_path, shared_dir)
        policy = load_policy_set(None, persistent, legacy)
        assert policy.errors == ()

        decision = policy.evaluate(
            Request(service, "+", source, target), SYSTEM
        )

        assert (decision.action, decision.target) == (action, resolved)
        path = legacy / name if (legacy / name).exists() else persistent / name
        assert decision.file is not None
        assert decision.file.resolve() == path.resolve()
        assert decision.line == _line_of(path, words)
