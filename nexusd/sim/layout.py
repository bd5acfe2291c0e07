# SPDX-License-Identifier: MIT
"""Where each part of a simulated dom0 lives inside its folder.

The folder mirrors dom0's own paths under one root, so the code that runs
in dom0 is handed the same relative layout here:

    ROOT/qubes.json                 state of the qubesd model
    ROOT/settings.json              simulator settings (answer to ``ask``)
    ROOT/qubesd.sock                qubesd's Admin API socket
    ROOT/etc/qubes/policy.d/        persistent policy (the admin's files)
    ROOT/run/qubes/policy.d/        runtime policy (nexusd's own file)
    ROOT/etc/qubes-rpc/policy/      old per-service files (!compat-4.0)
    ROOT/etc/qubes-rpc/             dom0 services (sockets or symlinks)
    ROOT/run/qubes-rpc/             dom0 services registered at run time
    ROOT/vms/NAME/qubes-rpc/        services inside qube NAME
    ROOT/vms/NAME/volumes/          volume images of qube NAME
    ROOT/etc/nexusd/                nexusd's configuration
    ROOT/var/lib/nexusd/            nexusd's database
    ROOT/run/nexusd/                nexusd's qrexec socket
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["SimLayout"]


@dataclass(frozen=True)
class SimLayout:
    """Paths of one simulated dom0 rooted at ``root``."""

    root: Path

    @property
    def state_file(self) -> Path:
        """The qubesd model's persisted state."""
        return self.root / "qubes.json"

    @property
    def settings_file(self) -> Path:
        """Simulator settings, e.g. how ``ask`` is answered."""
        return self.root / "settings.json"

    @property
    def qubesd_socket(self) -> Path:
        """qubesd's Admin API socket (``/var/run/qubesd.sock``)."""
        return self.root / "qubesd.sock"

    @property
    def policy_dir(self) -> Path:
        """``/etc/qubes/policy.d``."""
        return self.root / "etc" / "qubes" / "policy.d"

    @property
    def runtime_policy_dir(self) -> Path:
        """``/run/qubes/policy.d``."""
        return self.root / "run" / "qubes" / "policy.d"

    @property
    def legacy_policy_dir(self) -> Path:
        """``/etc/qubes-rpc/policy`` (read by ``!compat-4.0``)."""
        return self.root / "etc" / "qubes-rpc" / "policy"

    @property
    def rpc_dirs(self) -> tuple[Path, ...]:
        """dom0's qrexec service search path, in qrexec's order."""
        return (
            self.root / "run" / "qubes-rpc",
            self.root / "usr" / "local" / "etc" / "qubes-rpc",
            self.root / "etc" / "qubes-rpc",
        )

    def vm_rpc_dir(self, vm: str) -> Path:
        """Services that qube *vm* offers (``/etc/qubes-rpc`` inside it)."""
        return self.root / "vms" / vm / "qubes-rpc"

    def vm_volume_dir(self, vm: str) -> Path:
        """Volume images of qube *vm*."""
        return self.root / "vms" / vm / "volumes"

    @property
    def nexusd_config_dir(self) -> Path:
        """``/etc/nexusd``."""
        return self.root / "etc" / "nexusd"

    @property
    def nexusd_state_dir(self) -> Path:
        """``/var/lib/nexusd``."""
        return self.root / "var" / "lib" / "nexusd"

    @property
    def nexusd_run_dir(self) -> Path:
        """``/run/nexusd``."""
        return self.root / "run" / "nexusd"

    @property
    def nexusd_socket(self) -> Path:
        """nexusd's qrexec socket (``/run/nexusd/qrexec.sock``)."""
        return self.nexusd_run_dir / "qrexec.sock"
