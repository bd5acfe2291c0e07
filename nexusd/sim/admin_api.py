# SPDX-License-Identifier: MIT
"""The Admin API methods the simulated qubesd answers, one handler each.

Each method declares, as qubesd's ``@method`` decorator does, whether it
wants an argument and a payload and whether its destination must be dom0;
:func:`prepare` applies those checks in qubesd's order before a handler runs.
Handlers return the reply text (``None`` for an empty ``0`` reply) or raise
one of :mod:`nexusd.sim.qubesexc`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nexusd.sim import lifecycle
from nexusd.sim.holders import Holder, Qube
from nexusd.sim.model import Dom0Model, validate_tag
from nexusd.sim.propcheck import NoValue, sanitize, validate_name
from nexusd.sim.qubesexc import (
    PermissionDenied,
    ProtocolError,
    QubesException,
    QubesFeatureNotFoundError,
    QubesInvalidLabelError,
    QubesLabelNotFoundError,
    QubesNoSuchPropertyError,
    QubesVMAlreadyExistsError,
    QubesVMInvalidUUIDError,
    QubesVMNotFoundError,
)

__all__ = [
    "EVENTS_METHOD",
    "IMPORT_METHOD",
    "METHODS",
    "VM_CLASSES",
    "Call",
    "Method",
    "decode_vm",
    "prepare",
]

#: The classes qubesd registers (entry points ``qubes.vm``), sorted.
VM_CLASSES = (
    "AdminVM",
    "AppVM",
    "DispVM",
    "RemoteVM",
    "StandaloneVM",
    "TemplateVM",
)
EVENTS_METHOD = "admin.Events"
IMPORT_METHOD = "admin.vm.volume.ImportWithSize"
#: ``uuid:`` plus 36 characters (qubes/api/__init__.py: decode_vm).
UUID_REF_LEN = 41
_UUID_RE = re.compile(r"\Auuid:[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]*")
_FEATURE_NAME_RE = re.compile(r"\A[a-zA-Z0-9_.-]+\Z")
_FEATURE_VALUE_RE = re.compile(r"\A[\x20-\x7E]*\Z")
_LABEL_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
)
_POOLS = ("varlibqubes", "linux-kernel")
_POOL_VOLUMES = ("root", "private", "volatile", "kernel")


@dataclass
class Call:
    """One decoded request, as a handler sees it."""

    model: Dom0Model
    src: Qube
    dest: Qube
    method: str
    arg: str
    untrusted_payload: bytes
    endpoint: str | None = None
    #: ``permit(source, service, arg, target)``: policy filter for callers
    #: other than dom0 (``admin.vm.List``); ``None`` lets everything pass.
    permit: Callable[[str, str, str, str], bool] | None = None


Handler = Callable[[Call], "str | None"]


@dataclass(frozen=True)
class Method:
    """A method and qubesd's decorator flags for it."""

    handler: Handler
    wants_arg: bool | None
    wants_payload: bool | None
    dest_adminvm: bool | None
    endpoint: str | None = None


def decode_vm(model: Dom0Model, untrusted_ref: bytes) -> Qube:
    """Resolve a header's source or destination as qubesd's ``decode_vm``.

    Raises:
        UnicodeDecodeError: non-ASCII (qubesd lets this escape: empty reply).
        QubesVMInvalidUUIDError: a malformed ``uuid:`` reference.
        QubesValueError: a name that breaks qubesd's grammar.
        QubesVMNotFoundError: no such qube.
    """
    text = untrusted_ref.decode("ascii")
    if text.startswith("uuid:"):
        if len(text) != UUID_REF_LEN or not _UUID_RE.match(text):
            raise QubesVMInvalidUUIDError(text[5:])
        return model.find_uuid(text[5:])
    return model.find(validate_name(text))


def prepare(method: Method, call: Call) -> None:
    """Apply the decorator checks in qubesd's order.

    Raises:
        ProtocolError: with qubesd's message.
    """
    if method.wants_payload is True and call.untrusted_payload == b"":
        raise ProtocolError("expected payload")
    if method.wants_payload is False and call.untrusted_payload != b"":
        raise ProtocolError("unexpected payload")
    if method.wants_arg is True and not call.arg:
        raise ProtocolError("expected an argument")
    if method.wants_arg is False and call.arg:
        raise ProtocolError("unexpected argument")
    is_admin = call.dest.klass == "AdminVM"
    if method.dest_adminvm is True and not is_admin:
        raise ProtocolError("expected destination to be AdminVM")
    if method.dest_adminvm is False and is_admin:
        raise ProtocolError("expected destination to not be AdminVM")


# -- listing ------------------------------------------------------------------


def _vmclass_list(call: Call) -> str:
    return "".join(f"{name}\n" for name in VM_CLASSES)


def _vm_list(call: Call) -> str:
    if call.dest.name == "dom0":
        qubes = call.model.qubes()
        if call.permit is not None and call.src.klass != "AdminVM":
            qubes = [
                q
                for q in qubes
                if call.permit(call.src.name, "admin.vm.List", "", q.name)
            ]
    else:
        qubes = [call.dest]
    return "".join(
        f"{q.name} class={q.klass} state={q.power_state} uuid={q.get('uuid')}\n"
        for q in qubes
    )


# -- properties ---------------------------------------------------------------


def _holder(call: Call) -> Holder:
    return (
        call.model.globals if call.method.startswith("admin.p") else (call.dest)
    )


def _known(holder: Holder, name: str) -> str:
    if name not in holder.PROPS:
        raise QubesNoSuchPropertyError(holder.name, name)
    return name


def _prop_list(call: Call) -> str:
    return "".join(f"{name}\n" for name in _holder(call).PROPS)


def _prop_get(call: Call) -> str:
    holder = _holder(call)
    return holder.serialize(_known(holder, call.arg))


def _prop_get_all(call: Call) -> str:
    holder = _holder(call)
    lines = []
    for name in holder.PROPS:
        text = holder.serialize(name).replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"{name} {text}\n")
    return "".join(lines)


def _prop_get_default(call: Call) -> str | None:
    holder = _holder(call)
    prop = holder.PROPS[_known(holder, call.arg)]
    if prop.default is None:
        return None
    try:
        value = prop.default(holder)
    except NoValue:
        return None
    return f"type={prop.kind} {'' if value is None else value}"


def _prop_set(call: Call) -> None:
    holder = _holder(call)
    prop = holder.PROPS[_known(holder, call.arg)]
    value = sanitize(prop, call.untrusted_payload)
    call.model.set_property(holder, prop.name, value)


def _prop_reset(call: Call) -> None:
    holder = _holder(call)
    call.model.reset_property(holder, _known(holder, call.arg))


# -- features -----------------------------------------------------------------


def _feature_list(call: Call) -> str:
    return "".join(f"{name}\n" for name in call.dest.features)


def _feature_lookup(call: Call, chain: Callable[[Qube], Qube | None]) -> str:
    subject: Qube | None = call.dest
    while subject is not None:
        if call.arg in subject.features:
            return subject.features[call.arg]
        subject = chain(subject)
    if call.method.endswith("AdminVM"):
        dom0 = call.model.domains["dom0"]
        if dom0 is not call.dest and call.arg in dom0.features:
            return dom0.features[call.arg]
    raise QubesFeatureNotFoundError(call.dest.name, call.arg)


def _feature_get(call: Call) -> str:
    return _feature_lookup(call, lambda q: None)


def _feature_with_template(call: Call) -> str:
    return _feature_lookup(call, lambda q: q.template_qube())


def _feature_with_netvm(call: Call) -> str:
    return _feature_lookup(call, lambda q: q.netvm_qube())


def _feature_set(call: Call) -> None:
    try:
        untrusted_value = call.untrusted_payload.decode("ascii")
    except UnicodeDecodeError:
        msg = "Feature value contains non-ASCII characters"
        raise ProtocolError(msg) from None
    if not _FEATURE_NAME_RE.match(call.arg):
        raise ProtocolError("feature name contains illegal characters")
    if not _FEATURE_VALUE_RE.match(untrusted_value):
        raise ProtocolError(f"{call.arg} value contains illegal characters")
    value = untrusted_value
    call.model.set_feature(call.dest, call.arg, value, source=call.src.name)


def _feature_remove(call: Call) -> None:
    call.model.remove_feature(call.dest, call.arg, source=call.src.name)


# -- tags ---------------------------------------------------------------------


def _tag_list(call: Call) -> str:
    return "".join(f"{tag}\n" for tag in sorted(call.dest.tags))


def _tag_get(call: Call) -> str:
    return "1" if validate_tag(call.arg) in call.dest.tags else "0"


def _tag_set(call: Call) -> None:
    call.model.add_tag(call.dest, call.arg, source=call.src.name)


def _tag_remove(call: Call) -> None:
    call.model.remove_tag(call.dest, call.arg, source=call.src.name)


# -- labels -------------------------------------------------------------------


def validate_label_name(untrusted_label: str, *, creation: bool = False) -> str:
    """Return *untrusted_label* if qubesd's label-name grammar accepts it.

    Raises:
        QubesInvalidLabelError: with qubesd's message.
    """
    if not untrusted_label:
        raise QubesInvalidLabelError("Label name must be set")
    if creation and untrusted_label.isdigit():
        raise QubesInvalidLabelError("Label must not be a digit")
    if not all(ch in _LABEL_CHARS for ch in untrusted_label):
        raise QubesInvalidLabelError(
            "Label must be in safe set: "
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
        )
    return untrusted_label


def _label_list(call: Call) -> str:
    return "".join(f"{label.name}\n" for label in call.model.labels.values())


def _label_get(call: Call) -> str:
    return call.model.get_label(validate_label_name(call.arg)).color


def _label_index(call: Call) -> str:
    return str(call.model.get_label(validate_label_name(call.arg)).index)


# -- creation, removal, power -------------------------------------------------


def _vm_create(call: Call) -> None:
    allow_pool = call.method.startswith("admin.vm.CreateInPool.")
    klass = call.endpoint or ""
    kwargs: dict[str, Any] = {}
    invalid_template = invalid_label = False
    pool_error: QubesException | None = None
    pool: str | None = None
    pools: dict[str, str] = {}
    if call.arg:
        if klass not in ("AppVM", "DispVM"):
            raise ProtocolError(f"{klass} cannot be based on template")
        if call.arg in call.model.domains:
            kwargs["template"] = call.arg
        else:
            invalid_template = True
    try:
        untrusted_params = call.untrusted_payload.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(
            "Parameters contains non-ASCII characters"
        ) from None
    for untrusted_param in untrusted_params.split(" "):
        # No "=" escapes as ValueError, as in qubesd: the reply is empty.
        untrusted_key, untrusted_value = untrusted_param.split("=", 1)
        if untrusted_key in kwargs:
            raise ProtocolError("Options must be unique")
        if untrusted_key == "name":
            kwargs["name"] = validate_name(untrusted_value)
        elif untrusted_key == "label":
            validate_label_name(untrusted_value, creation=True)
            try:
                kwargs["label"] = call.model.get_label(untrusted_value).name
            except QubesLabelNotFoundError:
                invalid_label = True
        elif untrusted_key == "pool" and allow_pool:
            if pool is not None:
                raise ProtocolError("Option 'pool' must be unique")
            pool = untrusted_value
            if pool not in _POOLS:
                pool_error = QubesException(f"Unknown storage pool {pool}")
        elif untrusted_key.startswith("pool:") and allow_pool:
            volume = untrusted_key.split(":", 1)[1]
            if volume not in _POOL_VOLUMES:
                raise ProtocolError(
                    "Volume must be one of: " + ", ".join(_POOL_VOLUMES)
                )
            if volume in pools:
                raise ProtocolError(f"Option 'pool:{volume}' must be unique")
            pools[volume] = untrusted_value
            if untrusted_value not in _POOLS:
                msg = f"Unknown storage pool {untrusted_value}"
                pool_error = QubesException(msg)
        elif untrusted_key == "pool" or untrusted_key.startswith("pool:"):
            raise ProtocolError(
                "Pool option specified but 'allow_pool' is False"
            )
        else:
            raise ProtocolError(
                "Options does not match: name, label, pool, pool:"
            )
    for required in ("name", "label"):
        if required not in kwargs:
            raise ProtocolError(f"Creation requested without key: {required}")
    if pool and pools:
        raise ProtocolError(
            "Conflicting options specified: 'pool=', 'pool:volume='"
        )
    if kwargs["name"] in call.model.domains:
        msg = f"Qube already exists: {kwargs['name']}"
        raise QubesVMAlreadyExistsError(msg)
    if invalid_template:
        raise QubesVMNotFoundError(call.arg)
    if invalid_label:
        raise QubesLabelNotFoundError("untrusted label")
    if pool_error is not None:
        raise pool_error
    call.model.create(
        klass,
        kwargs["name"],
        kwargs["label"],
        kwargs.get("template"),
        source=call.src.name,
    )


def _vm_remove(call: Call) -> None:
    call.model.remove(call.dest)


def _vm_start(call: Call) -> None:
    lifecycle.start(call.model, call.dest)


def _vm_shutdown(call: Call) -> None:
    args = call.arg.split("+") if call.arg else []
    if not all(arg in ("force", "wait") for arg in args):
        raise ProtocolError("Argument must match: force, wait")
    lifecycle.shutdown(call.model, call.dest, force="force" in args)


def _vm_kill(call: Call) -> None:
    lifecycle.kill(call.model, call.dest)


def _vm_current_state(call: Call) -> str:
    return lifecycle.current_state(call.dest)


# -- volumes ------------------------------------------------------------------


def _volume_list(call: Call) -> str:
    return "".join(f"{name}\n" for name in call.dest.volume_names())


def _volume_info(call: Call) -> str:
    if call.arg not in call.dest.volume_names():
        raise PermissionDenied(
            f"Argument not in {call.dest.name + ' volumes'!r}"
        )
    info = call.dest.volume_info(call.arg)
    return "".join(f"{key}={value}\n" for key, value in info.items())


def _not_here(call: Call) -> None:
    # Events and volume import are streams; the server runs them itself.
    msg = f"{call.method} is served by the connection, not a handler"
    raise RuntimeError(msg)


def _methods() -> dict[str, Method]:
    table: dict[str, Method] = {}

    def add(
        name: str,
        handler: Handler,
        arg: bool | None,
        payload: bool | None,
        adminvm: bool | None,
    ) -> None:
        table[name] = Method(handler, arg, payload, adminvm)

    add("admin.vmclass.List", _vmclass_list, False, False, True)
    add("admin.vm.List", _vm_list, False, False, None)
    for scope, adminvm in (
        ("admin.vm.property", None),
        ("admin.property", True),
    ):
        add(f"{scope}.List", _prop_list, False, False, adminvm)
        add(f"{scope}.Get", _prop_get, True, False, adminvm)
        add(f"{scope}.GetAll", _prop_get_all, False, False, adminvm)
        add(f"{scope}.GetDefault", _prop_get_default, True, False, adminvm)
        add(f"{scope}.Set", _prop_set, True, None, adminvm)
        add(f"{scope}.Reset", _prop_reset, True, False, adminvm)
    add("admin.vm.feature.List", _feature_list, False, False, None)
    add("admin.vm.feature.Get", _feature_get, True, False, None)
    for suffix, handler in (
        ("CheckWithTemplate", _feature_with_template),
        ("CheckWithNetvm", _feature_with_netvm),
        ("CheckWithAdminVM", _feature_get),
        ("CheckWithTemplateAndAdminVM", _feature_with_template),
    ):
        add(f"admin.vm.feature.{suffix}", handler, True, False, None)
    add("admin.vm.feature.Set", _feature_set, True, None, None)
    add("admin.vm.feature.Remove", _feature_remove, True, False, None)
    add("admin.vm.tag.List", _tag_list, False, False, None)
    add("admin.vm.tag.Get", _tag_get, True, False, None)
    add("admin.vm.tag.Set", _tag_set, True, False, None)
    add("admin.vm.tag.Remove", _tag_remove, True, False, None)
    add("admin.label.List", _label_list, False, False, True)
    add("admin.label.Get", _label_get, True, False, True)
    add("admin.label.Index", _label_index, True, False, True)
    for klass in VM_CLASSES:
        for verb in ("Create", "CreateInPool"):
            table[f"admin.vm.{verb}.{klass}"] = Method(
                _vm_create, None, None, True, endpoint=klass
            )
    add("admin.vm.Remove", _vm_remove, False, False, None)
    add("admin.vm.Start", _vm_start, False, False, None)
    add("admin.vm.Shutdown", _vm_shutdown, None, False, None)
    add("admin.vm.Kill", _vm_kill, False, False, None)
    add("admin.vm.CurrentState", _vm_current_state, False, False, None)
    add("admin.vm.volume.List", _volume_list, False, False, None)
    add("admin.vm.volume.Info", _volume_info, True, False, None)
    add(EVENTS_METHOD, _not_here, False, False, None)
    # The import script passes on to internal.vm.volume.ImportBegin, whose
    # flags these are (qubes/api/internal.py).
    add(IMPORT_METHOD, _not_here, True, None, None)
    return table


#: Every method the simulated qubesd serves, by name.
METHODS = _methods()
