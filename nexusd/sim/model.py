# SPDX-License-Identifier: MIT
"""The simulated dom0's qubes: state, qubesd's rules, events, persistence.

:class:`Dom0Model` is the single owner of the simulated ``qubes.xml``: every
change is checked as qubesd checks it, fires qubesd's events (with the same
kwargs, in the same order) and is written atomically to the folder's state
file before the caller is answered.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from nexusd.sim import lifecycle, state
from nexusd.sim.holders import (
    QUBE_CLASSES,
    AdminVM,
    GlobalProps,
    Holder,
    Qube,
    wire_str,
)
from nexusd.sim.layout import SimLayout
from nexusd.sim.propcheck import NoValue, PropDef, validate_name
from nexusd.sim.qubesexc import (
    PermissionDenied,
    QubesFeatureNotFoundError,
    QubesLabelNotFoundError,
    QubesPropertyValueError,
    QubesTagNotFoundError,
    QubesValueError,
    QubesVMAlreadyExistsError,
    QubesVMInUseError,
    QubesVMNotFoundError,
    QubesVMNotHaltedError,
)
from nexusd.sim.state import STOCK_LABELS, Label, validate_tag

__all__ = [
    "PROHIBITED_FEATURES",
    "Dom0Model",
    "EventSink",
    "Label",
    "system_info_from_file",
    "validate_tag",
]

log = structlog.get_logger()

#: Features no Admin API caller may set or remove (qubes/ext/admin.py).
PROHIBITED_FEATURES = frozenset(
    {
        "deferred-netvm-original",
        "preload-dispvm",
        "preload-dispvm-completed",
        "preload-dispvm-in-progress",
    }
)
#: qubesd's ``max_qid``.
MAX_QID = 254
_ADMIN_EXT = "qubes.ext.admin.AdminExtension"

#: ``sink(subject, event, kwargs)``; subject ``None`` is the system.
EventSink = Callable[[str | None, str, dict[str, str]], None]


class Dom0Model:
    """dom0's qubes, labels and global properties, kept in one folder."""

    def __init__(self, layout: SimLayout) -> None:
        """An empty machine: dom0, the stock labels, no other qube."""
        self.layout = layout
        self.labels: dict[int, Label] = {lb.index: lb for lb in STOCK_LABELS}
        self.globals = GlobalProps(self)
        self.domains: dict[str, Qube] = {}
        self.kernels: list[str] = []
        self.host_memory_mib: int = 16384
        self.dom0_maxmem_mib: int = 4096
        self._sinks: list[EventSink] = []
        dom0 = AdminVM(self)
        dom0.values["label"] = "black"
        self.domains["dom0"] = dom0

    # -- persistence ---------------------------------------------------------

    @classmethod
    def load(cls, layout: SimLayout) -> Dom0Model:
        """Load the machine from *layout*'s state file.

        Raises:
            FileNotFoundError: the folder holds no state file.
            ValueError: the state file is not one this version wrote.
        """
        model = cls(layout)
        state.load_into(model, state.read(layout.state_file))
        return model

    def save(self) -> None:
        """Write the state atomically (temp file, fsync, rename, fsync)."""
        state.write_atomic(self.layout.state_file, state.dump(self))

    # -- events --------------------------------------------------------------

    def subscribe(self, sink: EventSink) -> Callable[[], None]:
        """Call *sink* for every event from now on; return the unsubscriber."""
        self._sinks.append(sink)

        def unsubscribe() -> None:
            if sink in self._sinks:
                self._sinks.remove(sink)

        return unsubscribe

    @property
    def subscriber_count(self) -> int:
        """How many event sinks are listening (one per events stream)."""
        return len(self._sinks)

    def fire(self, subject: Holder | None, event: str, **kwargs: Any) -> None:
        """Send one event, kwargs rendered as qubesd's ``str()`` renders."""
        name = (
            None
            if subject is None or subject is self.globals
            else (subject.name)
        )
        rendered = {key: wire_str(value) for key, value in kwargs.items()}
        for sink in list(self._sinks):
            # One broken listener must not fail the change that fired.
            try:
                sink(name, event, rendered)
            except Exception:
                log.exception("event_sink_failed", event=event)

    # -- queries -------------------------------------------------------------

    def qubes(self) -> list[Qube]:
        """All qubes in qubesd's order: dom0 first, then by name."""
        return sorted(
            self.domains.values(),
            key=lambda q: (q.klass != "AdminVM", q.name),
        )

    def find(self, name: str) -> Qube:
        """Return the qube called *name*.

        Raises:
            QubesVMNotFoundError: no such qube.
        """
        try:
            return self.domains[name]
        except KeyError:
            raise QubesVMNotFoundError(name) from None

    def find_uuid(self, text: str) -> Qube:
        """Return the qube with UUID *text*.

        Raises:
            QubesVMNotFoundError: no such qube.
        """
        for qube in self.domains.values():
            if str(qube.get("uuid")) == text:
                return qube
        raise QubesVMNotFoundError(f"uuid:{text}")

    def get_label(self, ident: str) -> Label:
        """Find a label by name, or by index given as text.

        Raises:
            QubesLabelNotFoundError: no such label.
        """
        for label in self.labels.values():
            if label.name == ident:
                return label
        if ident.isdigit() and int(ident) in self.labels:
            return self.labels[int(ident)]
        raise QubesLabelNotFoundError(ident)

    def connected_to(self, name: str) -> set[str]:
        """Qubes whose network goes through *name*, directly or not."""
        found: set[str] = set()
        pending = [name]
        while pending:
            current = pending.pop()
            for qube in self.domains.values():
                if qube.get_or_none("netvm") == current and (
                    qube.name not in found
                ):
                    found.add(qube.name)
                    pending.append(qube.name)
        return found

    def dependencies(self, qube: Qube) -> list[tuple[str, str]]:
        """What refers to *qube*: ``("@GLOBAL", prop)`` or ``(qube, prop)``."""
        deps = [
            ("@GLOBAL", prop.name)
            for prop in self.globals.PROPS.values()
            if prop.kind == "vm"
            and self.globals.get_or_none(prop.name) == (qube.name)
        ]
        for other in self.qubes():
            if other is qube:
                continue
            deps.extend(
                (other.name, prop.name)
                for prop in other.PROPS.values()
                if prop.kind == "vm"
                and not other.is_default(prop.name)
                and other.values[prop.name] == qube.name
            )
        return deps

    def system_info(self) -> dict[str, Any]:
        """qrexec's ``get_system_info()`` for the policy engine."""
        domains: dict[str, Any] = {}
        for qube in self.qubes():
            label = self.get_label(str(qube.get("label")))
            domains[qube.name] = {
                "internal": qube.features.get("internal"),
                "tags": sorted(qube.tags),
                "type": qube.klass,
                "template_for_dispvms": bool(
                    qube.get_or_none("template_for_dispvms")
                ),
                "default_dispvm": qube.get_or_none("default_dispvm"),
                "icon": f"appvm-{label.name}",
                "label": label.color,
                "guivm": qube.get_or_none("guivm"),
                "relayvm": None,
                "transport_rpc": None,
                "power_state": qube.power_state,
                "uuid": str(qube.get("uuid")),
            }
        return {"domains": domains}

    # -- properties ----------------------------------------------------------

    def set_property(self, holder: Holder, name: str, value: Any) -> None:
        """Set property *name* to an already parsed *value*, as qubesd does.

        Raises:
            QubesException: a subclass with qubesd's message.
            AttributeError: a write-once property already set (qubesd lets
                this escape, so the reply is empty).
        """
        prop = holder.PROPS[name]
        if prop.write_once and not holder.is_default(name):
            msg = f"property {name!r} is write-once and already set"
            raise AttributeError(msg)
        if prop.kind == "vm":
            value = self._check_vm_value(holder, prop, value)
        if value is not None and prop.setter is not None:
            value = prop.setter(holder, prop, value)
        try:
            old: Any = holder.get(name)
            has_old = True
        except NoValue:
            has_old = False
        olds = {"oldvalue": old} if has_old else {}
        self.fire(
            holder,
            f"property-pre-set:{name}",
            name=name,
            newvalue=value,
            **olds,
        )
        lifecycle.check_pre_set(self, holder, name)
        holder.values[name] = value
        if name in ("label", "template_for_dispvms"):
            self.fire(holder, "property-reset:icon", name="icon")
        self.fire(
            holder, f"property-set:{name}", name=name, newvalue=value, **olds
        )
        if name == "guivm" and isinstance(holder, Qube):
            lifecycle.retag_guivm(self, holder, "guivm", value)
        if name == "audiovm" and isinstance(holder, Qube):
            lifecycle.retag_guivm(self, holder, "audiovm", value)
        self.save()

    def _check_vm_value(self, holder: Holder, prop: PropDef, value: Any) -> Any:
        if value in ("", None):
            if prop.allow_none:
                return None
            msg = (
                f"Invalid value None for property {prop.name!r} of"
                f" {holder.name!r}"
            )
            raise QubesPropertyValueError(msg)
        if value not in self.domains:
            msg = f"Can't set {prop.name} to non-existing qube {value}"
            raise QubesPropertyValueError(msg)
        klass = self.domains[value].klass
        if prop.vmclass and klass not in prop.vmclass:
            msg = (
                f"wrong VM class: domains[{value!r}] is of type {klass}"
                f" and not {prop.vmclass[0]}"
            )
            raise QubesPropertyValueError(msg)
        return value

    def reset_property(self, holder: Holder, name: str) -> None:
        """Return property *name* to its default, firing qubesd's events.

        Raises:
            QubesException: a subclass with qubesd's message.
            AttributeError: a write-once property (empty reply in qubesd).
        """
        prop = holder.PROPS[name]
        if prop.write_once and not holder.is_default(name):
            msg = f"property {name!r} is write-once and already set"
            raise AttributeError(msg)
        try:
            olds: dict[str, Any] = {"oldvalue": holder.get(name)}
        except NoValue:
            olds = {}
        self.fire(holder, f"property-pre-reset:{name}", name=name, **olds)
        lifecycle.check_pre_reset(self, holder, name)
        self.fire(holder, f"property-pre-del:{name}", name=name, **olds)
        holder.values.pop(name, None)
        self.fire(holder, f"property-reset:{name}", name=name, **olds)
        self.fire(holder, f"property-del:{name}", name=name, **olds)
        self.save()

    # -- features and tags ---------------------------------------------------

    def set_feature(
        self, qube: Qube, name: str, value: str, *, source: str | None = None
    ) -> None:
        """Set a feature; *source* is the Admin API caller, if any.

        Raises:
            PermissionDenied: a prohibited feature asked through the API.
            QubesValueError: a ``service.*`` name qubesd refuses.
        """
        if source is not None and name in PROHIBITED_FEATURES:
            msg = f"changing this feature is prohibited by {_ADMIN_EXT}"
            raise PermissionDenied(msg)
        olds = (
            {"oldvalue": qube.features[name]} if name in qube.features else {}
        )
        self.fire(
            qube,
            f"domain-feature-pre-set:{name}",
            feature=name,
            value=value,
            **olds,
        )
        lifecycle.check_feature(name)
        qube.features[name] = value
        self.fire(
            qube,
            f"domain-feature-set:{name}",
            feature=name,
            value=value,
            **olds,
        )
        if name == "servicevm":
            self.fire(qube, "property-reset:icon", name="icon")
        self.save()

    def remove_feature(
        self, qube: Qube, name: str, *, source: str | None = None
    ) -> None:
        """Remove a feature.

        Raises:
            PermissionDenied: a prohibited feature asked through the API.
            QubesFeatureNotFoundError: the feature is not set.
        """
        if source is not None and name in PROHIBITED_FEATURES:
            msg = f"changing this feature is prohibited by {_ADMIN_EXT}"
            raise PermissionDenied(msg)
        if name not in qube.features:
            raise QubesFeatureNotFoundError(qube.name, name)
        self.fire(qube, f"domain-feature-pre-delete:{name}", feature=name)
        del qube.features[name]
        self.fire(qube, f"domain-feature-delete:{name}", feature=name)
        self.save()

    def check_tag_permission(self, tag: str, source: str | None) -> None:
        """Refuse a ``created-by-*`` change from any caller but dom0.

        Raises:
            PermissionDenied: with qubesd's message.
        """
        if source is None or not tag.startswith("created-by-"):
            return
        caller = self.domains.get(source)
        if caller is None or caller.klass != "AdminVM":
            msg = f"changing this tag is prohibited by {_ADMIN_EXT}"
            raise PermissionDenied(msg)

    def add_tag(
        self, qube: Qube, tag: str, *, source: str | None = None
    ) -> None:
        """Add a tag (no event if it is there already).

        Raises:
            QubesInvalidTagError: a tag outside qubesd's grammar.
            PermissionDenied: ``created-by-*`` from a caller other than dom0.
        """
        validate_tag(tag)
        self.check_tag_permission(tag, source)
        if tag in qube.tags:
            return
        qube.tags.add(tag)
        self.fire(qube, f"domain-tag-add:{tag}", tag=tag)
        self.save()

    def remove_tag(
        self, qube: Qube, tag: str, *, source: str | None = None
    ) -> None:
        """Remove a tag.

        Raises:
            QubesInvalidTagError: a tag outside qubesd's grammar.
            PermissionDenied: ``created-by-*`` from a caller other than dom0.
            QubesTagNotFoundError: the tag is not set.
        """
        validate_tag(tag)
        self.check_tag_permission(tag, source)
        if tag not in qube.tags:
            raise QubesTagNotFoundError(qube.name, tag)
        qube.tags.remove(tag)
        self.fire(qube, f"domain-tag-delete:{tag}", tag=tag)
        self.save()

    # -- creation and removal ------------------------------------------------

    def create(
        self,
        klass: str,
        name: str,
        label: str,
        template: str | None = None,
        *,
        source: str = "dom0",
    ) -> Qube:
        """Create a qube as ``admin.vm.Create.<klass>`` does.

        Raises:
            QubesException: a subclass with qubesd's message.
        """
        validate_name(name)
        if name in self.domains:
            msg = f"Qube already exists: {name}"
            raise QubesVMAlreadyExistsError(msg)
        label_name = self.get_label(label).name
        cls = QUBE_CLASSES.get(klass)
        if cls is None or klass == "AdminVM":
            msg = f"no such VM class: {klass!r}"
            raise QubesValueError(msg)
        qube = cls(self)
        if "template" in cls.PROPS:
            template = lifecycle.pick_template(self, klass, template)
        elif template:
            msg = f"{klass} cannot be based on template"
            raise QubesValueError(msg)
        qube.values.update(
            name=name,
            qid=self._free_qid(),
            uuid=str(uuid.uuid4()),
            label=label_name,
        )
        if template is not None:
            qube.values["template"] = template
        if klass == "DispVM":
            qube.values["dispid"] = lifecycle.free_dispid(self)
        for vm_prop in ("guivm", "audiovm"):
            target = qube.get_or_none(vm_prop)
            if target is not None:
                qube.tags.add(f"{vm_prop}-{target}")
        self.domains[name] = qube
        self.fire(None, "domain-add", vm=name)
        qube.tags.add(f"created-by-{source}")
        self.fire(
            qube,
            f"domain-tag-add:created-by-{source}",
            tag=f"created-by-{source}",
        )
        self.layout.vm_volume_dir(name).mkdir(parents=True, exist_ok=True)
        self.fire(qube, "domain-create-on-disk")
        self.save()
        log.info("qube_created", qube=name, klass=klass, source=source)
        return qube

    def seed_qube(
        self,
        klass: str,
        name: str,
        label: str,
        *,
        template: str | None = None,
        qid: int | None = None,
        qube_uuid: str | None = None,
        properties: dict[str, Any] | None = None,
        features: dict[str, str] | None = None,
        tags: tuple[str, ...] = (),
    ) -> Qube:
        """Add a qube as if loaded from ``qubes.xml``: no events, no checks
        beyond the name, no ``created-by-*`` tag. For building machines.

        Raises:
            QubesValueError: a bad name, or one already taken.
        """
        validate_name(name)
        if name in self.domains:
            msg = f"Qube already exists: {name}"
            raise QubesVMAlreadyExistsError(msg)
        qube = QUBE_CLASSES[klass](self)
        qube.values.update(
            name=name,
            qid=self._free_qid() if qid is None else qid,
            uuid=qube_uuid or str(uuid.uuid4()),
            label=self.get_label(label).name,
        )
        if template is not None:
            qube.values["template"] = template
        qube.values.update(properties or {})
        qube.features.update(features or {})
        self.domains[name] = qube
        for vm_prop in ("guivm", "audiovm"):
            target = qube.get_or_none(vm_prop)
            if target is not None:
                qube.tags.add(f"{vm_prop}-{target}")
        qube.tags.update(tags)
        return qube

    def _free_qid(self) -> int:
        used = {int(q.get("qid")) for q in self.domains.values()}
        for qid in range(1, MAX_QID):
            if qid not in used:
                return qid
        msg = "Cannot find unused qid!"
        raise LookupError(msg)

    def remove(self, qube: Qube) -> None:
        """Remove a halted qube that nothing refers to.

        Raises:
            QubesVMInUseError: dom0, installed by RPM, or still referred to.
            QubesVMNotHaltedError: the qube is not halted.
        """
        if qube.klass == "AdminVM":
            raise QubesVMInUseError(qube.name, "'dom0' cannot be removed")
        if qube.get_or_none("installed_by_rpm"):
            msg = f"VM installed by package manager: {qube.name}"
            raise QubesVMInUseError(qube.name, msg)
        if not qube.is_halted():
            raise QubesVMNotHaltedError(qube.name)
        self.fire(None, "domain-pre-delete", vm=qube.name)
        deps = self.dependencies(qube)
        if deps:
            log.warning(
                "qube_in_use",
                qube=qube.name,
                used_by=[":".join(dep) for dep in deps],
            )
            msg = (
                f"Domain is in use: {qube.name!r};  see 'journalctl -u"
                " qubesd -e' in dom0 for details"
            )
            raise QubesVMInUseError(qube.name, msg)
        del self.domains[qube.name]
        self.fire(None, "domain-delete", vm=qube.name)
        shutil.rmtree(self.layout.root / "vms" / qube.name, ignore_errors=True)
        self.save()
        log.info("qube_removed", qube=qube.name)


def system_info_from_file(layout: SimLayout) -> dict[str, Any]:
    """``system_info()`` of the machine as last saved in *layout*."""
    return Dom0Model.load(layout).system_info()
