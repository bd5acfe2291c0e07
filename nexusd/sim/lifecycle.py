# SPDX-License-Identifier: MIT
"""Power state, class-specific checks and volume import of simulated qubes.

These are the parts of qubesd that react to a change (a pre-event handler
that refuses it, a start that fires a sequence of events) kept apart from
the bookkeeping in :mod:`nexusd.sim.model`.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import TYPE_CHECKING, Any

from nexusd.sim.holders import Holder, Qube
from nexusd.sim.qubesexc import (
    QubesException,
    QubesValueError,
    QubesVMError,
    QubesVMInUseError,
    QubesVMNotFoundError,
    QubesVMNotHaltedError,
    QubesVMNotStartedError,
)

if TYPE_CHECKING:
    from pathlib import Path

    from nexusd.sim.model import Dom0Model

__all__ = [
    "MAX_SERVICE_NAME",
    "check_feature",
    "check_pre_reset",
    "check_pre_set",
    "current_state",
    "free_dispid",
    "import_begin",
    "import_end",
    "kill",
    "pick_template",
    "retag_guivm",
    "shutdown",
    "start",
]

#: qubesd's limit on the part after ``service.`` (qubes/ext/services.py).
MAX_SERVICE_NAME = 48
#: qubesd's ``max_dispid``.
MAX_DISPID = 10000
#: dom0's memory figures as the offline capture reports them (KiB).
DOM0_OFFLINE_MEM = 4242


def check_pre_set(model: Dom0Model, holder: Holder, name: str) -> None:
    """Class handlers of ``property-pre-set:<name>`` that may refuse.

    Raises:
        QubesVMNotHaltedError: a template change on a qube that runs.
    """
    if (
        name == "template"
        and isinstance(holder, Qube)
        and not holder.is_halted()
    ):
        msg = "Cannot change template while qube is running"
        raise QubesVMNotHaltedError(holder.name, msg)


def check_pre_reset(model: Dom0Model, holder: Holder, name: str) -> None:
    """Class handlers of ``property-pre-reset:<name>`` that may refuse.

    Raises:
        QubesValueError: the template of an AppVM or DispVM cannot be unset.
    """
    if name != "template" or holder.klass not in ("AppVM", "DispVM"):
        return
    default = model.globals.get_or_none("default_template")
    if holder.klass == "AppVM" and default is not None:
        msg = (
            "Cannot unset template. You can set it to the current default"
            f" ({default}) instead"
        )
        raise QubesValueError(msg)
    msg = "Cannot unset template"
    raise QubesValueError(msg)


def check_feature(name: str) -> None:
    """qubesd's check of ``service.*`` feature names (QubesDB keys).

    Raises:
        QubesValueError: with qubesd's message.
    """
    if not name.startswith("service."):
        return
    service = name[len("service.") :]
    if not service:
        msg = "Service name cannot be empty"
    elif "/" in service:
        msg = "Service name cannot contain a slash"
    elif service in (".", ".."):
        msg = 'Service name cannot be "." or ".."'
    elif len(service) > MAX_SERVICE_NAME and not service.startswith(
        "app-dispvm."
    ):
        msg = "Service name must not exceed 48 bytes"
    else:
        return
    raise QubesValueError(msg)


def retag_guivm(model: Dom0Model, qube: Qube, prop: str, value: Any) -> None:
    """Keep the ``guivm-<name>``/``audiovm-<name>`` tag in step."""
    for tag in [t for t in qube.tags if t.startswith(f"{prop}-")]:
        qube.tags.remove(tag)
        model.fire(qube, f"domain-tag-delete:{tag}", tag=tag)
    if value:
        tag = f"{prop}-{value}"
        qube.tags.add(tag)
        model.fire(qube, f"domain-tag-add:{tag}", tag=tag)


def pick_template(model: Dom0Model, klass: str, template: str | None) -> str:
    """The template a new qube of *klass* gets, checked as qubesd checks.

    Raises:
        QubesValueError: no template given and no default, or a DispVM
            template without ``template_for_dispvms``.
        QubesPropertyValueError: an AppVM template that is not a TemplateVM.
    """
    if template is None:
        key = "default_dispvm" if klass == "DispVM" else "default_template"
        template = model.globals.get_or_none(key)
        if template is None:
            msg = (
                "Template for the qube not specified, nor default template set."
            )
            raise QubesValueError(msg)
    target = model.find(template)
    if klass == "DispVM":
        if not target.get_or_none("template_for_dispvms"):
            msg = (
                f"template for disposable ({template}) needs to be an AppVM"
                " with template_for_dispvms=True"
            )
            raise QubesValueError(msg)
    elif target.klass != "TemplateVM":
        from nexusd.sim.qubesexc import QubesPropertyValueError

        msg = (
            f"wrong VM class: domains[{template!r}] is of type"
            f" {target.klass} and not TemplateVM"
        )
        raise QubesPropertyValueError(msg)
    return template


def free_dispid(model: Dom0Model) -> int:
    """A random disposable id no qube uses (qubesd draws at random too)."""
    used = {q.get_or_none("dispid") for q in model.domains.values()}
    while True:
        dispid = secrets.randbelow(MAX_DISPID)
        if dispid not in used:
            return dispid


def start(model: Dom0Model, qube: Qube) -> None:
    """Start *qube* (and its network chain) with qubesd's event sequence.

    A qube that is not halted is left alone, as qubesd does.

    Raises:
        QubesVMNotHaltedError: dom0.
        QubesException: feature ``prohibit-start`` is set.
    """
    if qube.klass == "AdminVM":
        raise QubesVMNotHaltedError(qube.name, "Cannot start Dom0 fake domain!")
    if qube.name not in model.domains:
        raise QubesVMNotFoundError(qube.name)
    if qube.power_state != "Halted":
        return
    rationale = qube.features.get("prohibit-start")
    if rationale:
        reason = f"Qube start is prohibited. Rationale: {rationale}"
        model.fire(qube, "domain-start-failed", reason=reason)
        raise QubesException(reason)
    model.fire(qube, "domain-pre-start", start_guid=True, mem_required=None)
    netvm = qube.netvm_qube()
    if netvm is not None and netvm.klass != "AdminVM" and netvm.is_halted():
        start(model, netvm)
    model.fire(qube, "domain-pre-spawn", start_guid=True)
    qube.power_state = "Transient"
    qube.xid = _free_xid(model)
    qube.start_time = str(time.time())
    for prop in ("xid", "stubdom_xid", "start_time"):
        model.fire(qube, f"property-reset:{prop}", name=prop)
    model.fire(qube, "domain-spawn", start_guid=True)
    model.fire(qube, "domain-pre-unpaused")
    model.fire(qube, "domain-unpaused")
    qube.power_state = "Running"
    model.fire(qube, "domain-start", start_guid=True)
    model.save()


def _free_xid(model: Dom0Model) -> int:
    used = {q.xid for q in model.domains.values()}
    xid = 1
    while xid in used:
        xid += 1
    return xid


def shutdown(model: Dom0Model, qube: Qube, *, force: bool = False) -> None:
    """Shut *qube* down; in the simulator it halts at once.

    Raises:
        QubesVMError: dom0.
        QubesVMNotStartedError: the qube is halted.
        QubesVMInUseError: running qubes use it as netvm (without force).
    """
    if qube.klass == "AdminVM":
        raise QubesVMError("Cannot shutdown Dom0 fake domain!")
    if qube.is_halted():
        raise QubesVMNotStartedError(qube.name)
    model.fire(qube, "domain-pre-shutdown", force=force)
    if qube.get_or_none("provides_network") and not force:
        users = [
            q.name
            for q in model.qubes()
            if q.get_or_none("netvm") == qube.name and q.is_running()
        ]
        if users:
            msg = (
                f"There are other VMs connected to this VM: {', '.join(users)}"
            )
            model.fire(qube, "domain-shutdown-failed", reason=msg)
            raise QubesVMInUseError(qube.name, msg)
    _stopped(model, qube)


def kill(model: Dom0Model, qube: Qube) -> None:
    """Destroy *qube* at once.

    Raises:
        QubesVMError: dom0.
        QubesVMNotStartedError: the qube is neither running nor paused.
    """
    if qube.klass == "AdminVM":
        raise QubesVMError("Cannot kill Dom0 fake domain!")
    if qube.is_halted():
        raise QubesVMNotStartedError(qube.name)
    _stopped(model, qube)


def _stopped(model: Dom0Model, qube: Qube) -> None:
    qube.power_state = "Halted"
    qube.xid = -1
    qube.start_time = None
    for prop in ("xid", "stubdom_xid", "start_time"):
        model.fire(qube, f"property-reset:{prop}", name=prop)
    model.fire(qube, "domain-stopped")
    model.fire(qube, "domain-shutdown")
    model.save()
    if qube.klass == "DispVM" and qube.get_or_none("auto_cleanup"):
        model.remove(qube)


def current_state(qube: Qube) -> str:
    """``admin.vm.CurrentState``: memory in KiB, CPU time, power state."""
    if qube.klass == "AdminVM":
        mem = DOM0_OFFLINE_MEM
        static_max = int(qube.get("maxmem")) * 1024
    elif qube.is_halted():
        mem = static_max = 0
    else:
        mem = int(qube.get("memory")) * 1024
        static_max = max(int(qube.get("maxmem")), mem // 1024) * 1024
    return (
        f"mem={mem} mem_static_max={static_max} cputime=0"
        f" power_state={qube.power_state}"
    )


def import_begin(model: Dom0Model, qube: Qube, volume: str, size: int) -> Path:
    """Check an import into *volume* and return the file to write.

    Raises:
        QubesVMNotHaltedError: the qube is not halted.
    """
    if not qube.is_halted():
        raise QubesVMNotHaltedError(qube.name)
    model.fire(qube, "domain-volume-import-begin", volume=volume, size=size)
    folder = model.layout.vm_volume_dir(qube.name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{volume}.img"


def import_end(
    model: Dom0Model, qube: Qube, volume: str, size: int, error: str | None
) -> None:
    """Finish an import: record the size, or fail with qubesd's message.

    Raises:
        QubesException: ``Data import failed: <error>``.
    """
    model.fire(
        qube, "domain-volume-import-end", volume=volume, success=error is None
    )
    if error is not None:
        msg = f"Data import failed: {error}"
        raise QubesException(msg)
    qube.volume_sizes[volume] = size
    model.save()


def sync_file(path: Path) -> None:
    """fsync a written image, as ``dd conv=fdatasync`` does."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
