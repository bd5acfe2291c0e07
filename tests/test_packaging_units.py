# SPDX-License-Identifier: MIT
"""The dom0 package's systemd units, tmpfiles.d and D-Bus bus policy.

Checked as their consumers read them: systemd-analyze and systemd-tmpfiles
on copies in a scratch root, and a private dbus-daemon that includes the
bus policy (tests/test_packaging.py covers the RPM that installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexusd.config import Paths

REPO = Path(__file__).resolve().parents[1]
SERVICE_UNIT = REPO / "systemd" / "nexusd.service"
SOCKET_UNIT = REPO / "systemd" / "nexusd.socket"
TMPFILES = REPO / "systemd" / "nexusd.tmpfiles"
BUS_POLICY = REPO / "dbus" / "org.tesseraqt.Nexus1.conf"
BUS_NAME = "org.tesseraqt.Nexus1"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
QUBES_GID = 98
NOBODY = 65534
#: Anything slower than this is hung, not slow.
COMMAND_DEADLINE = 120


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


def _mode(path: Path) -> tuple[str, int]:
    info = path.stat()
    return oct(info.st_mode & 0o7777), info.st_gid


def _scratch_root(root: Path) -> None:
    """Give *root* the accounts dom0 has, so rpm and tmpfiles find them."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "group").write_text(f"root:x:0:\nqubes:x:{QUBES_GID}:\n")
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")


def _in_root(root: Path, path: str | Path) -> Path:
    return root / str(path).lstrip("/")


class TestUnits:
    """systemd/: the directives issue 7 names, checked as systemd reads them."""

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

    def test_socket_is_daemon_default_root_qubes_0660(self) -> None:
        """If systemd binds the socket, it is where the qrexec entries
        point, and only root and the group qubes (qrexec-daemon) may
        connect."""
        unit = _unit(SOCKET_UNIT)["Socket"]

        assert unit["ListenStream"] == [str(Paths().socket)]
        assert (unit["SocketMode"], unit["SocketGroup"]) == (
            ["0660"],
            ["qubes"],
        )
        assert unit.get("SocketUser", ["root"]) == ["root"]
        assert unit.get("Accept", ["no"]) == ["no"]

    def test_verify_accepts_units_without_warnings(
        self, tmp_path: Path
    ) -> None:
        """If systemd-analyze verifies copies of both units offline (every
        directive parsed, ExecStart's binary executable, referenced units
        loaded), it reports nothing."""
        analyze = _need("systemd-analyze")
        units = [shutil.copy(u, tmp_path) for u in (SERVICE_UNIT, SOCKET_UNIT)]

        done = _run(
            [analyze, "verify", *map(str, units)],
            env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
        )

        assert (done.returncode, done.stderr, done.stdout) == (0, "", "")

    def test_security_exposure_is_low(self, tmp_path: Path) -> None:
        """If systemd rates the sandbox, the exposure stays at 2.0 or less."""
        analyze = _need("systemd-analyze")
        unit = shutil.copy(SERVICE_UNIT, tmp_path)

        done = _run(
            [analyze, "security", "--offline=true", "--threshold=20", unit]
        )

        assert done.returncode == 0, done.stdout[-2000:]

    def test_tmpfiles_lays_out_runtime_folders(self, tmp_path: Path) -> None:
        """If tmpfiles runs at boot, the folders get dom0's modes and groups."""
        tmpfiles = _need("systemd-tmpfiles")
        _scratch_root(tmp_path)

        done = _run([tmpfiles, "--create", f"--root={tmp_path}", str(TMPFILES)])

        assert done.returncode == 0, done.stderr
        policy = _in_root(tmp_path, Paths().runtime_policy_dir)
        assert _mode(policy) == ("0o2770", QUBES_GID)
        assert _mode(_in_root(tmp_path, Paths().socket.parent))[0] == "0o755"
        assert _in_root(tmp_path, Paths().state_dir).is_dir()


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
    _need("dbus-send")
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
    bus: str, dest: str, method: str, *args: str, user: int | None = None
) -> subprocess.CompletedProcess[str]:
    path = "/org/freedesktop/DBus" if dest.startswith("org.free") else "/"
    ids = (
        {}
        if user is None
        else {"user": user, "group": user, "extra_groups": []}
    )
    cmd = ["dbus-send", f"--bus={bus}", "--print-reply", f"--dest={dest}", path]
    return _run([*cmd, method, *args], **ids)


def _request_name(
    bus: str, name: str, user: int | None = None
) -> subprocess.CompletedProcess[str]:
    return _bus_call(
        bus,
        "org.freedesktop.DBus",
        "org.freedesktop.DBus.RequestName",
        f"string:{name}",
        "uint32:4",
        user=user,
    )


class TestBusPolicy:
    """dbus/org.tesseraqt.Nexus1.conf on a real dbus-daemon."""

    def test_root_may_own_the_name(self, bus: str) -> None:
        """If root asks for nexusd's bus name, it becomes its owner."""
        done = _request_name(bus, BUS_NAME)

        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[-2:] == ["uint32", "1"]

    def test_other_user_may_not_own_the_name(self, bus: str) -> None:
        """If an unprivileged user asks for the name, the bus refuses, while
        another name is granted to the same user."""
        mine = _request_name(bus, BUS_NAME, user=NOBODY)
        other = _request_name(bus, "org.example.Other", user=NOBODY)

        assert ACCESS_DENIED in mine.stderr
        assert other.returncode == 0, other.stderr

    def test_user_outside_qubes_may_not_call_nexusd(self, bus: str) -> None:
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
            ping = "org.freedesktop.DBus.Peer.Ping"
            root = _bus_call(bus, BUS_NAME, ping)
            nobody = _bus_call(bus, BUS_NAME, ping, user=NOBODY)
        finally:
            owner.terminate()
            owner.wait(timeout=COMMAND_DEADLINE)

        assert root.returncode == 0, root.stderr
        assert ACCESS_DENIED in nobody.stderr

    def test_group_qubes_may_call_and_inspect(self) -> None:
        """If a member of the group qubes calls nexusd, the file lets it use
        the interface, introspection, Peer and property reads, not own."""
        group = ET.parse(BUS_POLICY).getroot().find("policy[@group='qubes']")
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
