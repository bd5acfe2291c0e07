# SPDX-License-Identifier: MIT
"""The dom0 package: the RPM, what it installs, and nexusd started from it.

The RPM is built once per module with scripts/build-rpm.sh (as ``make rpm``
does), then queried, linted, installed into a scratch root and started there
against a simulated dom0 (tests/test_packaging_units.py checks the units
and the bus policy themselves).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

import nexusd
from nexusd.config import Paths
from nexusd.sim.layout import SimLayout

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "rpm" / "nexusd.spec"
QUBES_GID = 98
#: Anything slower than this is hung, not slow.
COMMAND_DEADLINE = 120
#: A helper that has not stopped this long after SIGTERM is hung.
STOP_DEADLINE = 30

DOM0_SERVICES = frozenset(
    f"nexus.{name}"
    for name in (
        "ContainerCreate ContainerRemove ContainerList ContainerReport"
        " LinkRequest LinkRemove"
    ).split()
)
#: Dependencies dom0's repositories provide (Fedora and Qubes packages).
DOM0_REQUIRES = frozenset(
    "python3 python3-structlog python3-systemd python3-pydbus python3-gobject"
    " python3-qubesadmin qubes-core-qrexec-dom0 qubes-core-dom0".split()
)
#: What dom0 gets, as ``rpm -qlv`` shows it: path, mode, owner.
EXPECTED_FILES = [
    line.split()
    for line in """
    /usr/bin/nexusd                          -rwxr-xr-x root:root
    /usr/bin/nexusctl                        -rwxr-xr-x root:root
    /usr/bin/nexus-sim                       -rwxr-xr-x root:root
    /usr/lib/systemd/system/nexusd.service   -rw-r--r-- root:root
    /usr/lib/systemd/system/nexusd.socket    -rw-r--r-- root:root
    /usr/lib/tmpfiles.d/nexusd.conf          -rw-r--r-- root:root
    /usr/share/dbus-1/system.d/org.tesseraqt.Nexus1.conf -rw-r--r-- root:root
    /etc/qubes/policy.d/50-nexus.policy      -rw-rw-r-- root:qubes
    /etc/nexusd                              drwxr-xr-x root:root
    /etc/nexusd/nexusd.toml                  -rw-r--r-- root:root
    /var/lib/nexusd                          drwxr-xr-x root:root
    /usr/share/doc/nexusd/dom0.md            -rw-r--r-- root:root
    """.strip().splitlines()
]


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=COMMAND_DEADLINE,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def _cmd(words: str, *more: str | Path) -> list[str]:
    """A command line: fixed words (none with a space), then arguments."""
    return [*words.split(), *map(str, more)]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
    return path


def _mode(path: Path) -> tuple[str, int]:
    info = path.stat()
    return oct(info.st_mode & 0o7777), info.st_gid


def _scratch_root(root: Path) -> None:
    """Give *root* the accounts dom0 has, so rpm and tmpfiles find them."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "group").write_text(f"root:x:0:\nqubes:x:{QUBES_GID}:\n")
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")


def _rpm_install(root: Path, rpm: Path) -> None:
    """Install *rpm* into *root* as dom0 would, then run its tmpfiles.d."""
    _scratch_root(root)
    rpm_cmd = "rpm --dbpath /var/lib/rpm --nodeps --noscripts --root"
    done = _run(_cmd(rpm_cmd, root, "-i", rpm))
    assert done.returncode == 0, done.stderr
    conf = root / "usr" / "lib" / "tmpfiles.d" / "nexusd.conf"
    tmpfiles = _need("systemd-tmpfiles")
    done = _run([tmpfiles, "--create", f"--root={root}", str(conf)])
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module", name="built")
def fixture_built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The binary and source RPMs, built once for this module."""
    _need("rpmbuild")
    out = tmp_path_factory.mktemp("rpm-out")
    env = {
        **os.environ,
        "NEXUSD_RPM_CHECK": "0",
        "NEXUSD_RPM_OUT": str(out),
        "NEXUSD_RPM_TOPDIR": str(tmp_path_factory.mktemp("rpm-top")),
    }
    done = _run([str(REPO / "scripts" / "build-rpm.sh")], env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    name = f"nexusd-{nexusd.__version__}-1"
    return {
        "binary": out / f"{name}.noarch.rpm",
        "source": out / f"{name}.src.rpm",
    }


@pytest.fixture(scope="module", name="files")
def fixture_files(built: dict[str, Path]) -> dict[str, dict[str, str]]:
    """The binary RPM's files: path -> mode, owner, link, flags."""
    fmt = (
        "[%{FILENAMES}\\t%{FILEMODES:perms}\\t%{FILEUSERNAME}:"
        "%{FILEGROUPNAME}\\t%{FILELINKTOS}\\t%{FILEFLAGS:fflags}\\n]"
    )
    done = _run(_cmd("rpm -qp --qf", fmt, built["binary"]))
    assert done.returncode == 0, done.stderr
    keys = ("mode", "owner", "link", "flags")
    return {
        line.split("\t")[0]: dict(zip(keys, line.split("\t")[1:], strict=True))
        for line in done.stdout.splitlines()
    }


@pytest.fixture(scope="module", name="installed")
def fixture_installed(
    built: dict[str, Path],
    files: dict[str, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """The binary RPM installed into a scratch root, as dom0 lays it out."""
    root = tmp_path_factory.mktemp("dom0-root")
    _rpm_install(root, built["binary"])
    site = next(p for p in files if p.endswith("/site-packages/nexusd"))
    return {
        "root": root,
        "site": root / site.lstrip("/").removesuffix("/nexusd"),
    }


def _in_root(root: Path, path: str | Path) -> Path:
    return root / str(path).lstrip("/")


class TestRpmBuild:
    """rpmbuild builds the spec from the checkout."""

    def test_builds_noarch_binary_and_source_packages(
        self, built: dict[str, Path]
    ) -> None:
        """If the build ran, both packages exist and the binary is noarch."""
        done = _run(_cmd("rpm -qp --qf", "%{ARCH} %{VERSION}", built["binary"]))

        assert built["source"].is_file()
        assert done.stdout == f"noarch {nexusd.__version__}"

    def test_requires_only_dom0_packages(self, built: dict[str, Path]) -> None:
        """If dom0 installs it, every named dependency is a dom0 package
        (besides what rpm derives from files and Python metadata)."""
        done = _run(_cmd("rpm -qp --requires", built["binary"]))
        names = {line.split()[0] for line in done.stdout.splitlines()}

        named = {
            name
            for name in names
            if not name.startswith(("/", "rpmlib(", "python(abi)", "config("))
            and not re.match(r"python3(\.\d+)?dist\(", name)
        }
        assert named == DOM0_REQUIRES

    def test_scriptlets_manage_units_on_install_upgrade_removal(
        self, built: dict[str, Path]
    ) -> None:
        """If installed, upgraded or removed, the scriptlets act on units,
        and removal takes nexusd's runtime policy lines with it."""
        done = _run(_cmd("rpm -qp --scripts", built["binary"]))
        parts = re.split(r"^(\w+) scriptlet.*:$", done.stdout, flags=re.M)
        scripts = dict(zip(parts[1::2], parts[2::2], strict=True))

        assert "preset nexusd.socket nexusd.service" in scripts["postinstall"]
        assert "systemd-tmpfiles --create" in scripts["postinstall"]
        assert (
            "disable --now nexusd.service nexusd.socket"
            in (scripts["preuninstall"])
        )
        assert "try-restart nexusd.service" in scripts["postuninstall"]
        assert (
            "rm -f /run/qubes/policy.d/45-nexus-links.policy"
            in (scripts["postuninstall"])
        )

    def test_rpmlint_reports_no_errors_and_explained_warnings(
        self, built: dict[str, Path]
    ) -> None:
        """If rpmlint checks both packages and the spec, it finds no error,
        and the spec explains every warning it gives."""
        rpmlint = _need("rpmlint")
        rpmlintrc = REPO / "rpm" / "nexusd.rpmlintrc"

        done = _run(
            [
                rpmlint,
                "-r",
                str(rpmlintrc),
                *map(str, built.values()),
                str(SPEC),
            ]
        )

        found = re.findall(r": ([EW]): ([a-z0-9%-]+)", done.stdout)
        assert [code for level, code in found if level == "E"] == []
        assert "0 errors" in done.stdout
        spec = SPEC.read_text().replace("%%", "%")
        assert {code for _, code in found if code not in spec} == set()


class TestRpmContents:
    """The files the package installs, with dom0's modes and owners."""

    @pytest.mark.parametrize(("path", "mode", "owner"), EXPECTED_FILES)
    def test_file_has_dom0_mode_and_owner(
        self, files: dict[str, dict[str, str]], path: str, mode: str, owner: str
    ) -> None:
        """If the package lists the file, its mode and owner are dom0's."""
        assert (files[path]["mode"], files[path]["owner"]) == (mode, owner)

    def test_config_kept_on_upgrade_policy_replaced(
        self, files: dict[str, dict[str, str]]
    ) -> None:
        """If upgraded, the admin's config stays and the policy is replaced."""
        config = files["/etc/nexusd/nexusd.toml"]["flags"]
        policy = files["/etc/qubes/policy.d/50-nexus.policy"]["flags"]

        assert ("c" in config, "n" in config) == (True, True)
        assert ("c" in policy, "n" in policy) == (True, False)

    def test_one_qrexec_entry_per_dom0_service(
        self, files: dict[str, dict[str, str]]
    ) -> None:
        """If qrexec looks up a dom0 nexus service, its entry is packaged."""
        entries = {
            PurePosixPath(path).name
            for path in files
            if path.startswith("/etc/qubes-rpc/")
        }

        assert entries == DOM0_SERVICES

    @pytest.mark.parametrize("service", sorted(DOM0_SERVICES))
    def test_qrexec_entry_links_to_nexusd_socket(
        self, files: dict[str, dict[str, str]], service: str
    ) -> None:
        """If qrexec follows an entry, it reaches nexusd's socket."""
        entry = files[f"/etc/qubes-rpc/{service}"]
        resolved = os.path.normpath(f"/etc/qubes-rpc/{entry['link']}")

        assert entry["mode"].startswith("l")
        assert not entry["link"].startswith("/")
        assert resolved == str(Paths().socket)

    def test_python_package_and_entry_points_installed(
        self, files: dict[str, dict[str, str]]
    ) -> None:
        """If installed, the package, its metadata and entry points are in,
        without pip's record of the build folder."""
        site = next(p for p in files if p.endswith("/site-packages/nexusd"))
        info = f"{site}-{nexusd.__version__}.dist-info"

        assert f"{site}/daemon.py" in files
        assert f"{site}/py.typed" in files
        assert f"{info}/entry_points.txt" in files
        assert f"{info}/direct_url.json" not in files


class TestQubesRpcEntries:
    """qubes-rpc/ in the checkout: symlinks, as qubesd registers admin.*."""

    def test_entries_are_symlinks_in_git(self) -> None:
        """If git stores the entries, each one is a symlink (mode 120000)."""
        done = _run(_cmd("git ls-files -s qubes-rpc"), cwd=REPO)
        modes = {
            line.split("\t")[1].removeprefix("qubes-rpc/"): line.split()[0]
            for line in done.stdout.splitlines()
        }

        assert modes == dict.fromkeys(DOM0_SERVICES, "120000")

    def test_no_entry_for_guest_services(self) -> None:
        """If a guest-side service were registered in dom0, qrexec would
        route it to nexusd: nexus.Connect and nexus.agent.Sync are absent."""
        names = {path.name for path in (REPO / "qubes-rpc").iterdir()}

        assert "nexus.Connect" not in names
        assert "nexus.agent.Sync" not in names
        assert names == DOM0_SERVICES


class TestScratchRootInstall:
    """rpm --root installs the package as it would be in dom0."""

    def test_rpm_verify_finds_every_file_as_packaged(
        self, installed: dict[str, Path]
    ) -> None:
        """If rpm verifies the installed package, nothing differs from it:
        contents, modes, owners and link targets."""
        root = installed["root"]

        done = _run(
            _cmd(
                "rpm --dbpath /var/lib/rpm --nodeps --root",
                root,
                "-V",
                "nexusd",
            )
        )

        assert (done.returncode, done.stdout) == (0, "")

    def test_policy_file_is_root_qubes_0664(
        self, installed: dict[str, Path]
    ) -> None:
        """If installed, the shipped policy is group qubes and mode 0664."""
        path = _in_root(
            installed["root"], "/etc/qubes/policy.d/50-nexus.policy"
        )

        assert (_mode(path), path.stat().st_uid) == (("0o664", QUBES_GID), 0)

    @pytest.mark.parametrize("service", sorted(DOM0_SERVICES))
    def test_qrexec_entry_resolves_inside_root(
        self, installed: dict[str, Path], service: str
    ) -> None:
        """If qrexec follows an installed entry, it lands on the socket
        path inside the same root, never outside it."""
        root = installed["root"]
        entry = _in_root(root, f"/etc/qubes-rpc/{service}")

        resolved = entry.resolve(strict=False)

        assert entry.is_symlink()
        assert resolved == _in_root(root, Paths().socket).resolve(strict=False)

    def test_runtime_folders_created_by_tmpfiles(
        self, installed: dict[str, Path]
    ) -> None:
        """If tmpfiles runs on the installed file, the folders nexusd needs
        exist with dom0's modes."""
        root = installed["root"]

        policy = _mode(_in_root(root, Paths().runtime_policy_dir))

        assert policy == ("0o2770", QUBES_GID)
        assert _mode(_in_root(root, Paths().socket.parent))[0] == "0o755"
        assert _in_root(root, Paths().state_dir).is_dir()

    def test_installed_package_is_importable_from_root(
        self, installed: dict[str, Path]
    ) -> None:
        """If Python looks in the root's site-packages, it finds nexusd
        there, with the version of this checkout."""
        env = {**os.environ, "PYTHONPATH": str(installed["site"])}
        code = "import nexusd; print(nexusd.__file__, nexusd.__version__)"

        done = _run([sys.executable, "-P", "-c", code], env=env)

        path, version = done.stdout.split()
        assert path.startswith(str(installed["site"]))
        assert version == nexusd.__version__


#: Starts a program as systemd's socket activation does: the listening
#: socket as descriptor 3, LISTEN_FDS=1 and LISTEN_PID naming the program.
_ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3);"
    " os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()));"
    " os.execv(sys.argv[2], sys.argv[2:])"
)


def _until(check: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    """Wait until *check* holds; fail if *proc* ends first or it hangs."""
    give_up = time.monotonic() + COMMAND_DEADLINE
    while not check():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
            pytest.fail(f"the process ended first, status {proc.returncode}")
        if time.monotonic() > give_up:
            pytest.fail("gave up waiting")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM *proc*; SIGKILL it if it hangs, so no test leaves it behind."""
    proc.terminate()
    try:
        proc.wait(timeout=STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=COMMAND_DEADLINE)
        raise


def _notified(notify: socket.socket, field: str) -> list[str]:
    """Read sd_notify datagrams until one carries *field*; return all."""
    seen: list[str] = []
    while field not in seen:
        seen += notify.recv(4096).decode().splitlines()
    return seen


class TestInstalledDaemon:
    """The installed nexusd runs on a simulated dom0 laid out by the RPM."""

    def test_starts_serves_and_stops_as_under_systemd(
        self, built: dict[str, Path], installed: dict[str, Path], tmp_path: Path
    ) -> None:
        """If started as systemd starts it (socket passed, NOTIFY_SOCKET set)
        on a simulated dom0 holding the package's files, nexusd says
        READY=1, answers a guest's call routed through the installed qrexec
        entry and policy, and exits 0 after STOPPING=1 on SIGTERM."""
        site, bindir = installed["site"], installed["root"] / "usr" / "bin"
        if not (site / "nexusd" / "sim" / "cli.py").is_file():
            pytest.skip("the package has no nexus-sim yet (nexusd/sim/cli.py)")
        env = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}

        def tool(name: str, *args: str | Path) -> list[str]:
            return [sys.executable, str(bindir / name), *map(str, args)]

        layout = SimLayout(tmp_path / "dom0")
        done = _run(tool("nexus-sim", "init", layout.root), env=env)
        assert done.returncode == 0, done.stderr
        _rpm_install(layout.root, built["binary"])
        logs = {name: (tmp_path / f"{name}.log").open("wb") for name in "qn"}
        qubesd = subprocess.Popen(
            tool("nexus-sim", "qubesd", layout.root), env=env, stderr=logs["q"]
        )
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(COMMAND_DEADLINE)
        try:
            _until(layout.qubesd_socket.exists, qubesd)
            listener.bind(str(layout.nexusd_socket))
            listener.listen()
            daemon = subprocess.Popen(
                [
                    sys.executable,
                    *("-c", _ACTIVATE, str(listener.fileno())),
                    *tool("nexusd", "--sim", layout.root),
                ],
                env={**env, "NOTIFY_SOCKET": str(tmp_path / "notify")},
                pass_fds=(listener.fileno(),),
                stderr=logs["n"],
            )
            try:
                started = _notified(notify, "READY=1")
                calls: dict[str, subprocess.CompletedProcess[str]] = {}

                def answered(qube: str) -> bool:
                    calls[qube] = _run(
                        tool(
                            "nexus-sim",
                            *("call", layout.root, "--from", qube),
                            *("--target", "@adminvm", "nexus.ContainerList"),
                        ),
                        env=env,
                        stdin=subprocess.DEVNULL,
                    )
                    # READY=1 comes before nexusd has read qubesd's list of
                    # qubes; until then it answers "unavailable, try again".
                    return '"unavailable"' not in calls[qube].stdout

                _until(lambda: answered("work"), daemon)
                answered("personal")
                daemon.send_signal(signal.SIGTERM)
                stopping = _notified(notify, "STOPPING=1")
                status = daemon.wait(timeout=COMMAND_DEADLINE)
            finally:
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait(timeout=COMMAND_DEADLINE)
        finally:
            _stop(qubesd)
            for sock in (listener, notify, *logs.values()):
                sock.close()

        assert "READY=1" in started
        assert calls["work"].returncode == 0, calls["work"].stderr
        reply = json.loads(calls["work"].stdout)
        assert (reply["ok"], reply["result"]["containers"]) == (True, [])
        refused = calls["personal"]
        assert (refused.returncode, refused.stdout) == (126, ""), refused.stderr
        assert "STOPPING=1" in stopping
        assert status == 0, (tmp_path / "n.log").read_text()[-3000:]
