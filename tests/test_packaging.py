# SPDX-License-Identifier: MIT
"""The dom0 package: the RPM, its systemd units, qrexec entries and bus policy.

The RPM is built once per test session with scripts/build-rpm.sh (as
``make rpm`` does), then queried, linted, installed into a scratch root and
started there against a simulated dom0.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

import nexusd
from nexusd.config import Paths

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "rpm" / "nexusd.spec"
SERVICE_UNIT = REPO / "systemd" / "nexusd.service"
SOCKET_UNIT = REPO / "systemd" / "nexusd.socket"
TMPFILES = REPO / "systemd" / "nexusd.tmpfiles"
BUS_POLICY = REPO / "dbus" / "org.tesseraqt.Nexus1.conf"
BUS_NAME = "org.tesseraqt.Nexus1"
QUBES_GID = 98
NOBODY = 65534
#: Anything slower than this is hung, not slow.
COMMAND_DEADLINE = 120

DOM0_SERVICES = frozenset(
    {
        "nexus.ContainerCreate",
        "nexus.ContainerRemove",
        "nexus.ContainerList",
        "nexus.ContainerReport",
        "nexus.LinkRequest",
        "nexus.LinkRemove",
    }
)
#: Dependencies dom0's repositories provide (Fedora and Qubes packages).
DOM0_REQUIRES = frozenset(
    {
        "python3",
        "python3-structlog",
        "python3-systemd",
        "python3-pydbus",
        "python3-gobject",
        "python3-qubesadmin",
        "qubes-core-qrexec-dom0",
        "qubes-core-dom0",
    }
)


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=COMMAND_DEADLINE,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
    return path


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file into section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _words(values: list[str]) -> set[str]:
    return {word for value in values for word in value.split()}


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
    version = nexusd.__version__
    return {
        "binary": out / f"nexusd-{version}-1.noarch.rpm",
        "source": out / f"nexusd-{version}-1.src.rpm",
    }


@pytest.fixture(scope="module", name="files")
def fixture_files(built: dict[str, Path]) -> dict[str, dict[str, str]]:
    """The binary RPM's files: path -> mode, user, group, link, flags."""
    fmt = (
        "[%{FILENAMES}\\t%{FILEMODES:perms}\\t%{FILEUSERNAME}\\t"
        "%{FILEGROUPNAME}\\t%{FILELINKTOS}\\t%{FILEFLAGS:fflags}\\n]"
    )
    done = _run(["rpm", "-qp", "--qf", fmt, str(built["binary"])])
    assert done.returncode == 0, done.stderr
    table = {}
    for line in done.stdout.splitlines():
        path, mode, user, group, link, flags = line.split("\t")
        table[path] = {
            "mode": mode,
            "owner": f"{user}:{group}",
            "link": link,
            "flags": flags,
        }
    return table


def _site(files: dict[str, dict[str, str]]) -> str:
    return next(
        path.removesuffix("/nexusd")
        for path in files
        if path.endswith("/site-packages/nexusd")
    )


class TestRpmBuild:
    """rpmbuild builds the spec from the checkout."""

    def test_builds_noarch_binary_and_source_packages(
        self, built: dict[str, Path]
    ) -> None:
        """If the build ran, both packages exist and the binary is noarch."""
        done = _run(
            ["rpm", "-qp", "--qf", "%{ARCH} %{VERSION}", str(built["binary"])]
        )

        assert built["source"].is_file()
        assert done.stdout == f"noarch {nexusd.__version__}"

    def test_requires_only_dom0_packages(self, built: dict[str, Path]) -> None:
        """If dom0 installs it, every named dependency is a dom0 package
        (besides what rpm derives from files and Python metadata)."""
        done = _run(["rpm", "-qp", "--requires", str(built["binary"])])
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
        """If installed, upgraded or removed, the scriptlets act on units."""
        done = _run(["rpm", "-qp", "--scripts", str(built["binary"])])
        parts = re.split(r"^(\w+) scriptlet.*:$", done.stdout, flags=re.M)
        scripts = dict(zip(parts[1::2], parts[2::2], strict=True))

        assert "preset nexusd.socket nexusd.service" in scripts["postinstall"]
        assert "systemd-tmpfiles --create" in scripts["postinstall"]
        assert (
            "disable --now nexusd.service nexusd.socket"
            in (scripts["preuninstall"])
        )
        assert "try-restart nexusd.service" in scripts["postuninstall"]

    def test_rpmlint_reports_no_errors_and_explained_warnings(
        self, built: dict[str, Path]
    ) -> None:
        """If rpmlint checks both packages and the spec, it finds no error,
        and the spec explains every warning it gives."""
        _need("rpmlint")
        done = _run(
            [
                "rpmlint",
                "-r",
                str(REPO / "rpm" / "nexusd.rpmlintrc"),
                str(built["binary"]),
                str(built["source"]),
                str(SPEC),
            ]
        )
        found = re.findall(r": ([EW]): ([a-z0-9%-]+)", done.stdout)

        assert [code for level, code in found if level == "E"] == []
        assert "0 errors" in done.stdout
        spec = SPEC.read_text().replace("%%", "%")
        unexplained = {
            code for level, code in found if level == "W" and code not in spec
        }
        assert unexplained == set()


class TestRpmContents:
    """The files the package installs, with dom0's modes and owners."""

    @pytest.mark.parametrize(
        ("path", "mode", "owner"),
        [
            ("/usr/bin/nexusd", "-rwxr-xr-x", "root:root"),
            ("/usr/bin/nexusctl", "-rwxr-xr-x", "root:root"),
            ("/usr/bin/nexus-sim", "-rwxr-xr-x", "root:root"),
            (
                "/usr/lib/systemd/system/nexusd.service",
                "-rw-r--r--",
                "root:root",
            ),
            (
                "/usr/lib/systemd/system/nexusd.socket",
                "-rw-r--r--",
                "root:root",
            ),
            ("/usr/lib/tmpfiles.d/nexusd.conf", "-rw-r--r--", "root:root"),
            (
                "/usr/share/dbus-1/system.d/org.tesseraqt.Nexus1.conf",
                "-rw-r--r--",
                "root:root",
            ),
            ("/etc/qubes/policy.d/50-nexus.policy", "-rw-rw-r--", "root:qubes"),
            ("/etc/nexusd/nexusd.toml", "-rw-r--r--", "root:root"),
            ("/etc/nexusd", "drwxr-xr-x", "root:root"),
            ("/var/lib/nexusd", "drwxr-xr-x", "root:root"),
            ("/usr/share/doc/nexusd/dom0.md", "-rw-r--r--", "root:root"),
        ],
    )
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

        assert "c" in config
        assert "n" in config
        assert "c" in policy
        assert "n" not in policy

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
        """If installed, the package, its metadata and entry points are in."""
        site = _site(files)
        version = nexusd.__version__

        assert f"{site}/nexusd/daemon.py" in files
        assert f"{site}/nexusd/py.typed" in files
        assert f"{site}/nexusd-{version}.dist-info/entry_points.txt" in files
        assert f"{site}/nexusd-{version}.dist-info/direct_url.json" not in files


class TestQubesRpcEntries:
    """qubes-rpc/ in the checkout: symlinks, as qubesd registers admin.*."""

    def test_entries_are_symlinks_in_git(self) -> None:
        """If git stores the entries, each one is a symlink (mode 120000)."""
        done = _run(["git", "ls-files", "-s", "qubes-rpc"], cwd=REPO)
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


class TestServiceUnit:
    """systemd/nexusd.service: the directives issue 7 names."""

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("Type", "notify"),
            ("NotifyAccess", "main"),
            ("WatchdogSec", "30s"),
            ("Restart", "on-failure"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("NoNewPrivileges", "yes"),
            ("CapabilityBoundingSet", ""),
            ("RestrictAddressFamilies", "AF_UNIX"),
            ("StateDirectory", "nexusd"),
        ],
    )
    def test_service_directive_set(self, key: str, value: str) -> None:
        """If systemd reads the unit, the directive has the wanted value."""
        assert _unit(SERVICE_UNIT)["Service"][key] == [value]

    def test_ordered_after_qubesd_and_bound_to_socket(self) -> None:
        """If dom0 boots, nexusd starts after qubesd and needs its socket."""
        unit = _unit(SERVICE_UNIT)["Unit"]

        assert "qubesd.service" in _words(unit["After"])
        assert "qubesd.service" in _words(unit["Wants"])
        assert "nexusd.socket" in _words(unit["Requires"])

    def test_interpreter_runs_without_shell_wrapper(self) -> None:
        """If started, the Python interpreter is the main process itself."""
        argv = _unit(SERVICE_UNIT)["Service"]["ExecStart"][0].split()

        assert argv[0] == "/usr/bin/python3"
        assert argv[argv.index("-m") + 1] == "nexusd.daemon"
        assert not {"sh", "bash", "-c"} & {Path(a).name for a in argv}

    def test_writable_paths_match_daemon_defaults(self) -> None:
        """If hardened, the unit still lets nexusd write where it writes."""
        service = _unit(SERVICE_UNIT)["Service"]
        writable = _words(service["ReadWritePaths"]) | {
            f"/var/lib/{name}" for name in _words(service["StateDirectory"])
        }
        defaults = Paths()

        assert str(defaults.state_dir) in writable
        assert str(defaults.runtime_policy_dir) in writable
        assert str(defaults.socket.parent) in writable


class TestSocketUnit:
    """systemd/nexusd.socket: the qrexec socket systemd holds for nexusd."""

    def test_socket_path_is_daemon_default(self) -> None:
        """If systemd binds the socket, it is where qrexec entries point."""
        socket = _unit(SOCKET_UNIT)["Socket"]

        assert socket["ListenStream"] == [str(Paths().socket)]

    def test_socket_is_root_qubes_0660(self) -> None:
        """If qrexec-daemon (group qubes) connects, it may; others may not."""
        socket = _unit(SOCKET_UNIT)["Socket"]

        assert socket["SocketMode"] == ["0660"]
        assert socket["SocketGroup"] == ["qubes"]
        assert socket.get("SocketUser", ["root"]) == ["root"]
        assert socket.get("Accept", ["no"]) == ["no"]


class TestSystemdAnalyze:
    """systemd-analyze accepts the units (checked offline, on copies)."""

    def test_verify_accepts_units_without_warnings(
        self, tmp_path: Path
    ) -> None:
        """If verified, both units load without error or unknown directive.

        Offline, verify parses every directive, checks that ExecStart's
        binary exists and is executable, and that referenced units load.
        """
        _need("systemd-analyze")
        for unit in (SERVICE_UNIT, SOCKET_UNIT):
            shutil.copy(unit, tmp_path / unit.name)

        done = _run(
            [
                "systemd-analyze",
                "verify",
                str(tmp_path / "nexusd.service"),
                str(tmp_path / "nexusd.socket"),
            ],
            env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
        )

        assert (done.returncode, done.stderr, done.stdout) == (0, "", "")

    def test_security_exposure_is_low(self, tmp_path: Path) -> None:
        """If systemd rates the sandbox, the exposure stays at 2.0 or less."""
        _need("systemd-analyze")
        shutil.copy(SERVICE_UNIT, tmp_path / SERVICE_UNIT.name)

        done = _run(
            [
                "systemd-analyze",
                "security",
                "--offline=true",
                "--threshold=20",
                str(tmp_path / "nexusd.service"),
            ]
        )

        assert done.returncode == 0, done.stdout[-2000:]

    def test_tmpfiles_lays_out_runtime_folders(self, tmp_path: Path) -> None:
        """If tmpfiles runs at boot, the folders get dom0's modes and groups."""
        tool = _need("systemd-tmpfiles")
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "group").write_text(
            f"root:x:0:\nqubes:x:{QUBES_GID}:\n"
        )
        (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")

        done = _run([tool, "--create", f"--root={tmp_path}", str(TMPFILES)])

        assert done.returncode == 0, done.stderr
        policy = (tmp_path / "run" / "qubes" / "policy.d").stat()
        assert (oct(policy.st_mode & 0o7777), policy.st_gid) == (
            "0o2770",
            QUBES_GID,
        )
        assert (tmp_path / "run" / "nexusd").is_dir()
        assert (tmp_path / "var" / "lib" / "nexusd").is_dir()


_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>{address}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""

_OWNER = """
import sys
from gi.repository import Gio, GLib
flags = (
    Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
    | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
)
conn = Gio.DBusConnection.new_for_address_sync(sys.argv[1], flags, None, None)
reply = conn.call_sync(
    "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
    "RequestName", GLib.Variant("(su)", (sys.argv[2], 4)),
    GLib.VariantType("(u)"), 0, -1, None,
)
print(reply.unpack()[0], flush=True)
GLib.MainLoop().run()
"""


@pytest.fixture(name="bus")
def fixture_bus(tmp_path: Path) -> Iterator[str]:
    """A private dbus-daemon whose policy includes the shipped bus policy."""
    daemon = _need("dbus-daemon")
    if os.geteuid() != 0:
        pytest.skip("calling as another user needs root")
    address = f"unix:abstract=nexusd-test-{os.getpid()}-{tmp_path.name}"
    config = tmp_path / "bus.conf"
    config.write_text(_BUS_CONFIG.format(address=address, policy=BUS_POLICY))
    proc = subprocess.Popen(
        [
            daemon,
            f"--config-file={config}",
            "--nofork",
            "--nopidfile",
            "--print-address=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=COMMAND_DEADLINE)


def _bus_call(
    address: str, dest: str, method: str, *args: str, user: int | None = None
) -> subprocess.CompletedProcess[str]:
    path = "/org/freedesktop/DBus" if dest.startswith("org.free") else "/"
    ids = (
        {}
        if user is None
        else {"user": user, "group": user, "extra_groups": []}
    )
    return _run(
        [
            "dbus-send",
            f"--bus={address}",
            "--print-reply",
            f"--dest={dest}",
            path,
            method,
            *args,
        ],
        **ids,
    )


class TestBusPolicy:
    """dbus/org.tesseraqt.Nexus1.conf on a real dbus-daemon."""

    def test_root_may_own_the_name(self, bus: str) -> None:
        """If root asks for nexusd's bus name, it becomes its owner."""
        done = _bus_call(
            bus,
            "org.freedesktop.DBus",
            "org.freedesktop.DBus.RequestName",
            f"string:{BUS_NAME}",
            "uint32:4",
        )

        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[-2:] == ["uint32", "1"]

    def test_other_user_may_not_own_the_name(self, bus: str) -> None:
        """If an unprivileged user asks for the name, the bus refuses, while
        another name is granted to the same user."""
        mine = _bus_call(
            bus,
            "org.freedesktop.DBus",
            "org.freedesktop.DBus.RequestName",
            f"string:{BUS_NAME}",
            "uint32:4",
            user=NOBODY,
        )
        other = _bus_call(
            bus,
            "org.freedesktop.DBus",
            "org.freedesktop.DBus.RequestName",
            "string:org.example.Other",
            "uint32:4",
            user=NOBODY,
        )

        assert "org.freedesktop.DBus.Error.AccessDenied" in mine.stderr
        assert other.returncode == 0, other.stderr

    def test_only_root_may_call_nexusd_when_not_in_qubes(
        self, bus: str
    ) -> None:
        """If nexusd owns the name, root reaches it and a user outside the
        group qubes is refused by the bus."""
        owner = subprocess.Popen(
            [sys.executable, "-c", _OWNER, bus, BUS_NAME],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert owner.stdout is not None
            assert owner.stdout.readline().strip() == "1"

            root = _bus_call(bus, BUS_NAME, "org.freedesktop.DBus.Peer.Ping")
            nobody = _bus_call(
                bus, BUS_NAME, "org.freedesktop.DBus.Peer.Ping", user=NOBODY
            )
        finally:
            owner.terminate()
            owner.wait(timeout=COMMAND_DEADLINE)

        assert root.returncode == 0, root.stderr
        assert "org.freedesktop.DBus.Error.AccessDenied" in nobody.stderr

    def test_group_qubes_may_call_and_inspect(self) -> None:
        """If a member of the group qubes calls nexusd, the file lets it use
        the interface, introspection, Peer and property reads."""
        policy = ET.parse(BUS_POLICY).getroot()
        group = policy.find("policy[@group='qubes']")
        assert group is not None

        allowed = {
            (rule.get("send_interface"), rule.get("send_member"))
            for rule in group.findall("allow")
            if rule.get("send_destination") == BUS_NAME
        }

        assert allowed == {
            (BUS_NAME, None),
            ("org.freedesktop.DBus.Introspectable", None),
            ("org.freedesktop.DBus.Peer", None),
            ("org.freedesktop.DBus.Properties", "Get"),
            ("org.freedesktop.DBus.Properties", "GetAll"),
        }
        assert group.findall("allow[@own]") == []


def _scratch_root(root: Path) -> None:
    """Give *root* the accounts dom0 has, so rpm and tmpfiles find them."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "group").write_text(
        f"root:x:0:\nqubes:x:{QUBES_GID}:user\n"
    )
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")


def _rpm_install(root: Path, rpm: Path) -> None:
    done = _run(
        [
            "rpm",
            "--root",
            str(root),
            "--dbpath",
            "/var/lib/rpm",
            "--nodeps",
            "--noscripts",
            "-i",
            str(rpm),
        ]
    )
    assert done.returncode == 0, done.stderr
    tmpfiles = root / "usr" / "lib" / "tmpfiles.d" / "nexusd.conf"
    done = _run(
        [_need("systemd-tmpfiles"), "--create", f"--root={root}", str(tmpfiles)]
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module", name="installed")
def fixture_installed(
    built: dict[str, Path],
    files: dict[str, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """The binary RPM installed into a scratch root, as dom0 lays it out."""
    root = tmp_path_factory.mktemp("dom0-root")
    _scratch_root(root)
    _rpm_install(root, built["binary"])
    return {"root": root, "site": root / _site(files).lstrip("/")}


def _in_root(root: Path, path: str | Path) -> Path:
    return root / str(path).lstrip("/")


class TestScratchRootInstall:
    """rpm --root installs the package as it would be in dom0."""

    def test_rpm_verify_finds_every_file_as_packaged(
        self, installed: dict[str, Path]
    ) -> None:
        """If rpm verifies the installed package, nothing differs from it:
        contents, modes, owners and link targets."""
        done = _run(
            [
                "rpm",
                "--root",
                str(installed["root"]),
                "--dbpath",
                "/var/lib/rpm",
                "--nodeps",
                "-V",
                "nexusd",
            ]
        )

        assert (done.returncode, done.stdout) == (0, "")

    def test_policy_file_is_root_qubes_0664(
        self, installed: dict[str, Path]
    ) -> None:
        """If installed, the shipped policy is group qubes and mode 0664."""
        path = _in_root(
            installed["root"], "/etc/qubes/policy.d/50-nexus.policy"
        )

        info = path.stat()

        assert (oct(info.st_mode & 0o7777), info.st_uid, info.st_gid) == (
            "0o664",
            0,
            QUBES_GID,
        )

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
        policy = _in_root(root, Paths().runtime_policy_dir).stat()
        run = _in_root(root, Paths().socket.parent).stat()

        assert (oct(policy.st_mode & 0o7777), policy.st_gid) == (
            "0o2770",
            QUBES_GID,
        )
        assert oct(run.st_mode & 0o7777) == "0o755"
        assert _in_root(root, Paths().state_dir).is_dir()

    def test_installed_package_is_importable_from_root(
        self, installed: dict[str, Path]
    ) -> None:
        """If Python looks in the root's site-packages, it finds nexusd
        there, with the version of this checkout."""
        done = _run(
            [
                sys.executable,
                "-c",
                "import nexusd; print(nexusd.__file__, nexusd.__version__)",
            ],
            env={
                **os.environ,
                "PYTHONPATH": str(installed["site"]),
                "PYTHONSAFEPATH": "1",
            },
        )

        path, version = done.stdout.split()
        assert path.startswith(str(installed["site"]))
        assert version == nexusd.__version__
