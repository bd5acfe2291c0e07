# SPDX-License-Identifier: MIT
"""Ready-made simulated machines: the capture's and the demo's.

``build_capture_machine`` seeds the qubes the qubesd transcripts were
captured against (same names, UUIDs, labels, qids), so replayed calls get
the same bytes. ``init_machine`` lays out a whole simulated dom0 folder for
``nexus-sim init``: a stock-looking Qubes machine with NixOS qubes for
nexusd, the policy folders and the project's policy files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nexusd
from nexusd.sim.admin_api import METHODS
from nexusd.sim.layout import SimLayout
from nexusd.sim.model import Dom0Model
from nexusd.sim.settings import Settings

__all__ = [
    "CAPTURE_KERNEL",
    "DEMO_KERNEL",
    "USER_POLICY",
    "build_capture_machine",
    "build_demo_machine",
    "init_machine",
    "project_policy_files",
]

#: The placeholder kernel of the offline capture.
CAPTURE_KERNEL = "6.6.0-harness"
#: A dom0-provided VM kernel as a current Qubes machine has one.
DEMO_KERNEL = "6.12.11-1.fc41"
#: The policy file an administrator adds, with the demo's admin rule.
USER_POLICY = "30-user.policy"
_USER_POLICY_TEXT = """\
# Rules of this machine's administrator. Files with a lower number win, so
# these come before the packages' defaults (50-nexus.policy, 90-*).
#
# The demo's admin rule: the qube work may ask nexusd for a link to port
# 5432 of the container postgres in the qube db.
nexus.LinkRequest +postgres.5432 work db allow target=dom0
"""
_INSTALLED_POLICY = Path("/etc/qubes/policy.d/50-nexus.policy")
_INSTALLED_RPC = Path("/etc/qubes-rpc")
_NIXOS = {
    "os": "Linux",
    "os-distribution": "nixos",
    "os-version": "25.05",
    "qrexec": "1",
    "gui": "1",
}
_NEXUS_GUEST = "nexus-guest"
_AGENT_SERVICE = "service.nexus-agent"


def build_capture_machine(layout: SimLayout) -> Dom0Model:
    """The machine of ``shared/fixtures/qubesd-transcripts``, saved."""
    model = Dom0Model(layout)
    model.kernels = [CAPTURE_KERNEL]
    model.globals.values["default_kernel"] = CAPTURE_KERNEL
    model.seed_qube(
        "TemplateVM",
        "nixos-25.05",
        "black",
        qid=1,
        qube_uuid="a09b7d21-2ff1-568c-8d0c-b853eb156b7e",
        features={"os-distribution": "nixos"},
    )
    model.seed_qube(
        "TemplateVM",
        "fedora-42",
        "black",
        qid=2,
        qube_uuid="2bca89af-1965-5f18-9d72-523cc63a8496",
        features={"os-distribution": "fedora"},
    )
    model.seed_qube(
        "AppVM",
        "work",
        "blue",
        template="nixos-25.05",
        qid=3,
        qube_uuid="e8bd7c04-5129-5757-8fcd-3fdc4d63256f",
    )
    model.seed_qube(
        "AppVM",
        "db",
        "red",
        template="nixos-25.05",
        qid=4,
        qube_uuid="3a35a521-c1b8-5f4a-b98b-4013d2c214f2",
    )
    model.globals.values["default_template"] = "nixos-25.05"
    model.save()
    return model


def build_demo_machine(layout: SimLayout) -> Dom0Model:
    """A stock-looking Qubes machine plus NixOS qubes for nexusd, saved."""
    model = Dom0Model(layout)
    model.kernels = [DEMO_KERNEL]
    model.globals.values["default_kernel"] = DEMO_KERNEL
    rpm = {"installed_by_rpm": True}
    model.seed_qube("TemplateVM", "nixos-25.05", "black", features=_NIXOS)
    model.seed_qube(
        "TemplateVM",
        "fedora-42",
        "black",
        properties=rpm,
        features={
            "os": "Linux",
            "os-distribution": "fedora",
            "os-version": "42",
            "qrexec": "1",
            "gui": "1",
        },
    )
    for role in ("gw", "ws"):
        model.seed_qube(
            "TemplateVM",
            f"whonix-{role}-17",
            "black",
            properties=rpm,
            features={
                "os": "Linux",
                "os-distribution": "whonix",
                "os-distribution-like": "debian",
                "os-version": "17",
                f"whonix-{role}": "1",
                "qrexec": "1",
                "gui": "1",
            },
            tags=("whonix-updatevm",),
        )
    model.seed_qube(
        "AppVM",
        "sys-net",
        "red",
        template="fedora-42",
        properties={
            "provides_network": True,
            "netvm": None,
            "autostart": True,
        },
        features={"servicevm": "1"},
    )
    model.seed_qube(
        "AppVM",
        "sys-firewall",
        "green",
        template="fedora-42",
        properties={
            "provides_network": True,
            "netvm": "sys-net",
            "autostart": True,
        },
        features={"servicevm": "1"},
    )
    model.seed_qube(
        "AppVM",
        "default-dvm",
        "red",
        template="fedora-42",
        properties={"template_for_dispvms": True},
        features={"appmenus-dispvm": "1"},
    )
    model.globals.values.update(
        default_template="fedora-42",
        default_netvm="sys-firewall",
        default_dispvm="default-dvm",
        updatevm="sys-firewall",
        clockvm="sys-net",
    )
    for name, label in (("work", "blue"), ("db", "purple")):
        model.seed_qube(
            "AppVM",
            name,
            label,
            template="nixos-25.05",
            features={_AGENT_SERVICE: "1"},
            tags=(_NEXUS_GUEST,),
        )
    model.seed_qube("AppVM", "personal", "yellow", template="fedora-42")
    model.save()
    return model


def project_policy_files() -> list[Path]:
    """The project's ``policy/*.policy`` files: from a checkout, or the
    installed ``50-nexus.policy``.
    """
    checkout = Path(nexusd.__file__).resolve().parents[1] / "policy"
    found = sorted(checkout.glob("*.policy")) if checkout.is_dir() else []
    if not found and _INSTALLED_POLICY.is_file():
        found = [_INSTALLED_POLICY]
    return found


def init_machine(root: Path, *, ask: str = "deny") -> Dom0Model:
    """Lay out a new simulated dom0 in *root* and return its model.

    Raises:
        FileExistsError: *root* exists and is not empty.
    """
    if root.exists() and any(root.iterdir()):
        msg = f"{root} is not empty"
        raise FileExistsError(msg)
    root.mkdir(parents=True, exist_ok=True)
    layout = SimLayout(root)
    for folder in (
        layout.policy_dir,
        layout.runtime_policy_dir,
        layout.legacy_policy_dir,
        *layout.rpc_dirs,
        layout.nexusd_config_dir,
        layout.nexusd_state_dir,
        layout.nexusd_run_dir,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    for source in project_policy_files():
        shutil.copyfile(source, layout.policy_dir / source.name)
    (layout.policy_dir / USER_POLICY).write_text(
        _USER_POLICY_TEXT, encoding="utf-8"
    )
    _link_nexus_services(layout)
    _link_admin_api(layout)
    Settings(ask=ask).save(layout)
    model = build_demo_machine(layout)
    for qube in model.qubes():
        if qube.klass != "AdminVM":
            layout.vm_rpc_dir(qube.name).mkdir(parents=True, exist_ok=True)
            layout.vm_volume_dir(qube.name).mkdir(parents=True, exist_ok=True)
    return model


def _link_admin_api(layout: SimLayout) -> None:
    """Register qubesd's methods as dom0 services, as qubes-core-admin's
    ``make install`` does: a symlink per method to qubesd's socket.
    """
    rpc_dir = layout.rpc_dirs[-1]
    target = os.path.relpath(layout.qubesd_socket, rpc_dir)
    for name in METHODS:
        (rpc_dir / name).symlink_to(target)


def _link_nexus_services(layout: SimLayout) -> None:
    """Register nexusd's services in dom0's ``/etc/qubes-rpc`` as the RPM
    does: a relative symlink per service to nexusd's socket.
    """
    rpc_dir = layout.rpc_dirs[-1]
    checkout = Path(nexusd.__file__).resolve().parents[1] / "qubes-rpc"
    source = checkout if checkout.is_dir() else _INSTALLED_RPC
    names = (
        sorted(p.name for p in source.glob("nexus.*"))
        if source.is_dir()
        else []
    )
    target = os.path.relpath(layout.nexusd_socket, rpc_dir)
    for name in names:
        (rpc_dir / name).symlink_to(target)
