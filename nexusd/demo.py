# SPDX-License-Identifier: MIT
"""The demo: nexusd's main job on a simulated dom0, step by step.

It creates a simulated dom0, starts its qubesd and nexusd as processes, and
then plays guests through the simulated qrexec router, printing each
command and its answer. ``python -m nexusd.demo [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Demo", "main"]

READY_TIMEOUT = 20.0
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name
    return str(found) if found.exists() else name


@dataclass
class Step:
    """One step of the demo and what came of it."""

    title: str
    argv: list[str]
    stdin: bytes
    status: int
    stdout: str
    stderr: str

    def reply(self) -> dict[str, Any]:
        """The JSON reply nexusd sent, if the call reached it."""
        text = self.stdout.strip()
        return json.loads(text) if text.startswith("{") else {}


@dataclass
class Demo:
    """A simulated dom0 with qubesd and nexusd running in it."""

    root: Path
    out: Any = sys.stdout
    steps: list[Step] = field(default_factory=list)
    buses: list[Any] = field(default_factory=list)
    #: Extra environment of every command the demo runs (never its own).
    env: dict[str, str] = field(default_factory=dict)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def say(self, text: str = "") -> None:
        """Print a line of narration."""
        print(text, file=self.out, flush=True)

    def run(self, title: str, argv: list[str], stdin: bytes = b"") -> Step:
        """Run one command, show it and its answer, and remember it."""
        shown = " ".join(argv[:1] + [a for a in argv[1:]])
        shown = shown.replace(str(self.root), "$DOM0")
        self.say(f"\n== {title}")
        if stdin:
            self.say(f"$ printf '%s' '{stdin.decode()}' | {shown}")
        else:
            self.say(f"$ {shown}")
        proc = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            timeout=60,
            check=False,
            env={**os.environ, **self.env},
        )
        step = Step(
            title,
            argv,
            stdin,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        self.steps.append(step)
        for line in step.stdout.strip().splitlines():
            self.say(f"  {line}")
        for line in step.stderr.strip().splitlines():
            self.say(f"  (stderr) {line}")
        self.say(f"  (exit status {step.status})")
        return step

    def guest(
        self,
        title: str,
        source: str,
        call: str,
        payload: dict[str, Any] | bytes | None = None,
        target: str = "@adminvm",
    ) -> Step:
        """A guest agent's call through the simulated qrexec router, as
        ``qrexec-client-vm TARGET SERVICE+ARG`` would make it."""
        argv = [_tool("nexus-sim"), "call", str(self.root), "--from", source]
        argv += ["--target", target]
        argv.append(call)
        if isinstance(payload, dict):
            payload = json.dumps(payload, separators=(",", ":")).encode()
        return self.run(title, argv, payload or b"")

    def admin(self, title: str, *args: str, payload: bytes = b"") -> Step:
        """An Admin API call from dom0 to the simulated qubesd."""
        argv = [_tool("nexus-sim"), "query", str(self.root), *args]
        return self.run(title, argv, payload)

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Start a background process (stopped by :meth:`stop_all`)."""
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **self.env, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=self._log(Path(argv[0]).name),
        )
        self._procs.append(proc)

    def _log(self, name: str) -> Any:
        return (self.root / f"{name}.log").open("ab")

    def wait_for_socket(self, path: Path) -> None:
        """Wait until something listens at *path*."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(path))
                except OSError:
                    time.sleep(0.05)
                    continue
                return
        msg = f"nothing listens at {path}"
        raise RuntimeError(msg)

    def start_nexusd(self) -> subprocess.Popen[bytes]:
        """Start nexusd and wait for its READY=1 on a notify socket."""
        notify = self.root / "notify.sock"
        with contextlib.suppress(FileNotFoundError):
            notify.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify))
        sock.settimeout(READY_TIMEOUT)
        argv = [_tool("nexusd"), "--sim", str(self.root)]
        self.start(argv, {"NOTIFY_SOCKET": str(notify)})
        try:
            while True:
                message = sock.recv(4096).decode()
                if "READY=1" in message.splitlines():
                    self.say(f"  nexusd says: {message.replace(chr(10), ' ')}")
                    break
        finally:
            sock.close()
        return self._procs[-1]

    def stop(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGTERM one process and return its exit status."""
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        finally:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        """Stop whatever still runs, the private bus last."""
        for proc in reversed(self._procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs.clear()
        for bus in self.buses:
            bus.stop()
        self.buses.clear()


class _Echo:
    """A TCP echo server on loopback: the 'postgres' listener in db."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(4096)
                conn.sendall(b"db/postgres got: " + data)

    def close(self) -> None:
        self.sock.close()


def play(demo: Demo) -> None:
    """The steps of the demo."""
    root = demo.root
    demo.say(f"Simulated dom0 in {root}")
    demo.run("Create a simulated dom0", [_tool("nexus-sim"), "init", str(root)])
    _start_bus(demo)
    demo.start([_tool("nexus-sim"), "qubesd", str(root)])
    demo.wait_for_socket(root / "qubesd.sock")
    demo.say("\n== Start nexusd (Type=notify: it says READY=1 once serving)")
    nexusd = demo.start_nexusd()

    demo.guest(
        "work asks for container 'web'",
        "work",
        "nexus.ContainerCreate+web",
        {"ports": [8080], "resources": {"memory_mb": 512}},
    )
    demo.guest(
        "work asks for container 'api'", "work", "nexus.ContainerCreate+api"
    )
    demo.guest(
        "db asks for 'postgres' offering port 5432",
        "db",
        "nexus.ContainerCreate+postgres",
        {"ports": [5432], "autostart": True},
    )
    demo.guest(
        "work repeats its request for 'web' (same answer: retries are safe)",
        "work",
        "nexus.ContainerCreate+web",
        {"ports": [8080], "resources": {"memory_mb": 512}},
    )
    demo.guest(
        "personal (not a nexus guest) asks: dom0's policy refuses",
        "personal",
        "nexus.ContainerCreate+web",
    )
    demo.admin(
        "The admin caps work at 2 containers (qvm-features work"
        " nexus.max-containers 2)",
        "admin.vm.feature.Set",
        "work",
        "nexus.max-containers",
        payload=b"2",
    )
    time.sleep(0.2)
    demo.guest(
        "work asks for a third container", "work", "nexus.ContainerCreate+cache"
    )
    demo.guest("work removes 'api'", "work", "nexus.ContainerRemove+api")
    demo.guest("work lists its containers", "work", "nexus.ContainerList")

    echo = _Echo()
    try:
        _links(demo, echo)
    finally:
        echo.close()
    _nixos(demo)
    _admin_view(demo)

    demo.say("\n== Stop nexusd (SIGTERM)")
    status = demo.stop(nexusd)
    demo.say(f"  nexusd exited with status {status}")


def _links(demo: Demo, echo: _Echo) -> None:
    root = demo.root
    rpc = root / "vms" / "db" / "qubes-rpc"
    rpc.mkdir(parents=True, exist_ok=True)
    service = rpc / "nexus.Connect+postgres.5432"
    service.symlink_to(f"/dev/tcp/127.0.0.1/{echo.port}")
    demo.say(
        f"\n(db's agent registered its end of port 5432: {service.name} ->"
        f" /dev/tcp/127.0.0.1/{echo.port})"
    )
    demo.guest(
        "Before any link, work cannot reach db's postgres",
        "work",
        "nexus.Connect+postgres.5432",
        b"hello",
        target="db",
    )
    demo.guest(
        "work links its 'web' to db's postgres:5432 (the admin allowed this"
        " pair in 30-user.policy)",
        "work",
        "nexus.LinkRequest+postgres.5432",
        {"from": "web"},
        target="db",
    )
    demo.run(
        "nexusd's runtime policy file now holds the link's line",
        [
            "cat",
            str(root / "run" / "qubes" / "policy.d" / "45-nexus-links.policy"),
        ],
    )
    demo.guest(
        "A byte stream from work reaches db's listener through nexus.Connect",
        "work",
        "nexus.Connect+postgres.5432",
        b"hello",
        target="db",
    )
    demo.guest(
        "personal cannot connect",
        "personal",
        "nexus.Connect+postgres.5432",
        b"hello",
        target="db",
    )
    demo.admin("The admin kills db", "admin.vm.Kill", "db")
    demo.admin(
        "The admin deletes db through the Admin API", "admin.vm.Remove", "db"
    )
    time.sleep(0.3)
    demo.guest(
        "work's link went with db; its containers remain",
        "work",
        "nexus.ContainerList",
    )
    demo.run(
        "The policy line is gone",
        [
            "cat",
            str(root / "run" / "qubes" / "policy.d" / "45-nexus-links.policy"),
        ],
    )
    demo.guest(
        "The same connection is now refused",
        "work",
        "nexus.Connect+postgres.5432",
        b"hello",
        target="db",
    )


DECLARED = """\
# The qubes this machine should have (/etc/nexusd/qubes.toml).
[system]
default_template = "nixos-26.05"

[templates."nixos-26.05"]
label = "black"

[qubes.shop]
template = "nixos-26.05"
label = "blue"
quota = 4

[qubes.api]
template = "nixos-26.05"
label = "orange"
netvm = ""

[qubes.personal]
template = "nixos-26.05"
label = "yellow"
"""


def _start_bus(demo: Demo) -> None:
    """A private D-Bus for nexusd and nexusctl (dom0 uses the system bus)."""
    from nexusd.dbus.private_bus import PrivateBus

    bus = PrivateBus()
    demo.env["NEXUS_DBUS_ADDRESS"] = bus.start()
    demo.buses.append(bus)
    demo.say("(a private D-Bus for nexusctl: NEXUS_DBUS_ADDRESS is set)")


def _nixos(demo: Demo) -> None:
    ctl = _tool("nexusctl")
    image = demo.root / "nixos-26.05.img"
    image.write_bytes(hashlib.sha256(b"nixos").digest() * 65536)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    demo.run(
        "Import a NixOS root image (2 MiB, generated) as a template",
        [
            ctl,
            "template",
            "import",
            "nixos-26.05",
            str(image),
            "--sha256",
            digest,
        ],
    )
    demo.run(
        "A wrong sha256 is refused and nothing is left behind",
        [
            ctl,
            "template",
            "import",
            "nixos-bad",
            str(image),
            "--sha256",
            "0" * 64,
        ],
    )
    demo.run(
        "Create a NixOS qube 'shop' from it (nexus guest, agent enabled)",
        [
            ctl,
            "qube",
            "create",
            "shop",
            "--template",
            "nixos-26.05",
            "--label",
            "green",
            "--max-containers",
            "3",
        ],
    )
    demo.run(
        "A qube from a template that is not NixOS is refused",
        [
            ctl,
            "qube",
            "create",
            "legacy",
            "--template",
            "fedora-42",
            "--label",
            "red",
        ],
    )
    declared = demo.root / "etc" / "nexusd" / "qubes.toml"
    declared.write_text(DECLARED, encoding="utf-8")
    demo.say(f"\n(the admin declares {declared.name}:)")
    for line in DECLARED.splitlines():
        demo.say(f"  | {line}")
    demo.run("What apply would change", [ctl, "diff"])
    demo.run("Apply it", [ctl, "apply"])
    demo.run("Nothing left to change", [ctl, "diff"])
    demo.run("Qubes not based on a NixOS template", [ctl, "audit"])


def _admin_view(demo: Demo) -> None:
    ctl = _tool("nexusctl")
    user = demo.root / "etc" / "qubes" / "policy.d" / "30-user.policy"
    rule = "nexus.LinkRequest +cache.6379 work shop allow target=dom0"
    with user.open("a", encoding="utf-8") as f:
        f.write(rule + "\n")
    demo.say(f"\n(the admin adds to {user.name}: {rule})")
    demo.admin("shop starts", "admin.vm.Start", "shop")
    demo.guest(
        "shop's agent asks for 'cache' offering port 6379",
        "shop",
        "nexus.ContainerCreate+cache",
        {"ports": [6379]},
    )
    demo.guest(
        "work links its 'web' to shop's cache:6379",
        "work",
        "nexus.LinkRequest+cache.6379",
        {"from": "web"},
        target="shop",
    )
    demo.run("nexusctl status", [ctl, "status"])
    demo.run("nexusctl containers", [ctl, "containers"])
    demo.run("nexusctl links", [ctl, "links"])
    demo.run(
        "Which rule lets work reach shop's cache:6379?",
        [ctl, "policy", "explain", "work", "shop", "nexus.Connect+cache.6379"],
    )
    demo.run(
        "Which rule refuses personal?",
        [
            ctl,
            "policy",
            "explain",
            "personal",
            "@adminvm",
            "nexus.ContainerCreate+web",
        ],
    )


@contextlib.contextmanager
def _folder(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=False)
        yield keep.resolve()
        return
    path = Path(tempfile.mkdtemp(prefix="nexus-demo-"))
    try:
        yield path / "dom0"
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the demo to its end; tests/test_demo.py checks each answer."""
    parser = argparse.ArgumentParser(prog="python -m nexusd.demo")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="build the simulated dom0 in DIR (must not exist) and keep it",
    )
    args = parser.parse_args(argv)
    with _folder(args.keep) as root:
        demo = Demo(root)
        try:
            play(demo)
        finally:
            demo.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
