# SPDX-License-Identifier: MIT
"""``nexus-sim``: in-process through main(), and as the installed command."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nexusd.sim.cli import main
from nexusd.sim.layout import SimLayout
from nexusd.sim.model import Dom0Model

#: Guard against a hang while waiting for the socket; never a speed check.
READY_GUARD = 20
TOOL = Path(sys.executable).parent / "nexus-sim"


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def wait_for_socket(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_GUARD
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"qubesd did not come up (status {proc.poll()})")
        time.sleep(0.05)


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    root = tmp_path / "dom0"
    assert main(["init", str(root)]) == 0
    return root


@pytest.fixture
def qubesd(machine: Path):
    proc = subprocess.Popen(
        [str(TOOL), "qubesd", str(machine)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for_socket(SimLayout(machine).qubesd_socket, proc)
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(READY_GUARD)
    proc.stderr.close()


class TestInit:
    def test_init_builds_the_demo_machine(self, machine: Path) -> None:
        """If init runs, the folder holds the stock qubes, the NixOS guests
        and the project's policy plus the admin's 30-user.policy."""
        model = Dom0Model.load(SimLayout(machine))
        layout = SimLayout(machine)

        assert {
            "dom0",
            "nixos-25.05",
            "fedora-42",
            "whonix-gw-17",
            "whonix-ws-17",
            "sys-net",
            "sys-firewall",
            "work",
            "db",
            "personal",
        } <= set(model.domains)
        assert model.globals.get("default_template") == "fedora-42"
        assert model.globals.get("default_netvm") == "sys-firewall"
        for guest in ("work", "db"):
            qube = model.domains[guest]
            assert "nexus-guest" in qube.tags
            assert qube.features["service.nexus-agent"] == "1"
            assert qube.get("template") == "nixos-25.05"
        assert model.domains["nixos-25.05"].features["os-distribution"] == (
            "nixos"
        )
        assert (layout.policy_dir / "50-nexus.policy").is_file()
        user = (layout.policy_dir / "30-user.policy").read_text()
        assert (
            "nexus.LinkRequest +postgres.5432 work db allow target=dom0" in user
        )

    def test_init_refuses_a_non_empty_folder(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """If DIR is not empty, init refuses and leaves it as it was."""
        (tmp_path / "keep").write_text("mine")

        status = main(["init", str(tmp_path)])

        assert status == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
        assert "not empty" in capsys.readouterr().err


class TestPolicyAndSettings:
    def test_policy_prints_the_decision_as_json(
        self, machine: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """If policy is asked about the demo link, stdout is one JSON object
        naming the deciding file and line."""
        status = main(
            [
                "policy",
                str(machine),
                "work",
                "db",
                "nexus.LinkRequest+postgres.5432",
            ]
        )

        decision = json.loads(capsys.readouterr().out)
        assert status == 0
        assert decision["action"] == "allow"
        assert decision["target"] == "dom0"
        assert decision["file"].endswith("30-user.policy")
        assert decision["line"] == 6
        assert "reason" in decision

    def test_settings_switch_ask_answer(
        self, machine: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """If settings --ask allow runs, the folder's settings say allow."""
        status = main(["settings", str(machine), "--ask", "allow"])

        assert status == 0
        assert json.loads(capsys.readouterr().out) == {"ask": "allow"}
        saved = json.loads(SimLayout(machine).settings_file.read_text())
        assert saved["ask"] == "allow"

    def test_command_on_missing_machine_fails(self, tmp_path: Path) -> None:
        """If DIR holds no simulated dom0, the command exits with an error."""
        with pytest.raises(SystemExit) as info:
            main(["policy", str(tmp_path), "work", "db", "x"])

        assert "no simulated dom0" in str(info.value)


class TestCall:
    def test_refused_call_exits_126(
        self,
        machine: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsysbinary: pytest.CaptureFixture[bytes],
    ) -> None:
        """If policy refuses, call exits 126 with qrexec-client-vm's message
        and prints nothing on stdout."""
        feed_stdin(monkeypatch, b"{}")

        status = main(
            [
                "call",
                str(machine),
                "--from",
                "personal",
                "--target",
                "@adminvm",
                "nexus.ContainerCreate+web",
            ]
        )

        captured = capsysbinary.readouterr()
        assert status == 126
        assert captured.out == b""
        assert captured.err.endswith(b"Request refused\n")


class TestInstalledCommand:
    def test_init_qubesd_query_and_clean_stop(self, tmp_path: Path) -> None:
        """If the installed nexus-sim builds a machine, serves it and removes
        a qube through query, the reply is raw qubesd bytes, a second removal
        exits 1, and SIGTERM stops qubesd with status 0 and no socket."""
        root = tmp_path / "dom0"
        subprocess.run([str(TOOL), "init", str(root)], check=True)
        sock = SimLayout(root).qubesd_socket
        proc = subprocess.Popen(
            [str(TOOL), "qubesd", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_socket(sock, proc)
            first = subprocess.run(
                [str(TOOL), "query", str(root), "admin.vm.Remove", "personal"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            second = subprocess.run(
                [str(TOOL), "query", str(root), "admin.vm.Remove", "personal"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(READY_GUARD)

        assert (first.returncode, first.stdout) == (0, b"0\x00")
        assert second.returncode == 1
        assert second.stdout == (
            b"2\x00QubesVMNotFoundError\x00\x00No such domain: 'personal'\x00"
        )
        assert status == 0
        assert not sock.exists()
        assert "personal" not in Dom0Model.load(SimLayout(root)).domains

    def test_query_in_process_with_payload(
        self,
        machine: Path,
        qubesd: subprocess.Popen,
        monkeypatch: pytest.MonkeyPatch,
        capsysbinary: pytest.CaptureFixture[bytes],
    ) -> None:
        """If query runs through main() with a payload on stdin, qubesd gets
        it (a feature is set) and the raw reply is stdout."""
        feed_stdin(monkeypatch, b"2")

        status = main(
            [
                "query",
                str(machine),
                "admin.vm.feature.Set",
                "work",
                "nexus.max-containers",
            ]
        )

        assert status == 0
        assert capsysbinary.readouterr().out == b"0\x00"
        work = Dom0Model.load(SimLayout(machine)).domains["work"]
        assert work.features["nexus.max-containers"] == "2"

    def test_qubesd_refuses_a_second_server(
        self, machine: Path, qubesd: subprocess.Popen
    ) -> None:
        """If qubesd already serves DIR, a second one exits 1 and the first
        keeps its socket."""
        second = subprocess.run(
            [str(TOOL), "qubesd", str(machine)],
            capture_output=True,
            timeout=READY_GUARD,
            check=False,
        )

        assert second.returncode == 1
        assert b"already exists" in second.stderr
        assert SimLayout(machine).qubesd_socket.exists()
        assert qubesd.poll() is None
