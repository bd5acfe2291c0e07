# SPDX-License-Identifier: MIT
"""Property definitions of the simulated qubes and of the system.

One :class:`PropDef` per qubesd property: its wire type, load stage (which
orders ``GetAll``), default, parser and setter checks, written from what
qubesd does (``qubes/vm/qubesvm.py``, ``qubes/app.py``). Values are kept as
plain data: qubes and labels are referenced by name.
"""

from __future__ import annotations

import ipaddress
import re
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nexusd.names import QUBE_NAME_MAX
from nexusd.sim.qubesexc import QubesPropertyValueError, QubesValueError

if TYPE_CHECKING:
    from nexusd.sim.holders import Holder

__all__ = [
    "ADMINVM_PROPS",
    "APPVM_PROPS",
    "DISPVM_PROPS",
    "GLOBAL_PROPS",
    "STANDALONEVM_PROPS",
    "TEMPLATEVM_PROPS",
    "NoValue",
    "PropDef",
    "validate_name",
]

#: qubesd's limit on ``kernelopts`` (qubes/vm/qubesvm.py).
KERNELOPTS_MAX = 512
_NAME_RE = re.compile(r"\A[a-zA-Z][a-zA-Z0-9_.-]*\Z")
_NAME_START_RE = re.compile(r"\A[0-9_.-]")
_MAC_RE = re.compile(r"\A([0-9a-f][0-9a-f]:){5}[0-9a-f][0-9a-f]\Z")
_USER_TEXT = string.ascii_letters + string.digits + "_-+,."
_USER_CHARS = frozenset(_USER_TEXT)
_KBD_VARIANT_RE = re.compile(r"\A[a-zA-Z0-9-_]*\Z")
_KBD_OPTIONS_RE = re.compile(r"\A[a-zA-Z0-9-_:,]*\Z")
_PRINTABLE = frozenset(string.printable)
_BOOL_FALSE = ("0", "no", "false", "off")
_BOOL_TRUE = ("1", "yes", "true", "on")


class NoValue(Exception):
    """The property is unset and has no default."""


def validate_name(untrusted_name: str) -> str:
    """Return *untrusted_name* if qubesd's ``validate_name`` accepts it.

    Raises:
        QubesValueError: with qubesd's message for the first rule broken.
    """
    if len(untrusted_name) > QUBE_NAME_MAX:
        msg = "VM name must be shorter than 32 characters"
        raise QubesValueError(msg)
    if _NAME_START_RE.match(untrusted_name):
        msg = "VM name cannot start with hyphen, underscore, dot or numbers"
        raise QubesValueError(msg)
    if not _NAME_RE.match(untrusted_name):
        msg = "VM name contains illegal characters"
        raise QubesValueError(msg)
    if untrusted_name == "Domain-0":
        msg = "VM name cannot be 'Domain-0'"
        raise QubesValueError(msg)
    if untrusted_name in ("none", "default"):
        msg = "VM name cannot be 'none' nor 'default'"
        raise QubesValueError(msg)
    if untrusted_name.endswith("-dm"):
        msg = "VM name cannot end with -dm"
        raise QubesValueError(msg)
    return untrusted_name


Default = Callable[["Holder"], Any]
Setter = Callable[["Holder", "PropDef", Any], Any]


@dataclass(frozen=True)
class PropDef:
    """One property: how it is typed, defaulted, parsed and checked.

    ``kind`` is the wire type of ``Get`` (``str``, ``int``, ``bool``, ``vm``
    or ``label``); ``parse`` names the Python type qubesd converts a ``Set``
    payload to (``int``, ``bool``, ``IPv4Address``, ...), or ``None`` for
    free text.
    """

    name: str
    kind: str = "str"
    parse: str | None = None
    stage: int = 2
    default: Default | None = None
    setter: Setter | None = None
    write_once: bool = False
    stateless: bool = False
    vmclass: tuple[str, ...] = ()
    allow_none: bool = False

    @property
    def sort_key(self) -> tuple[int, int, str]:
        """qubesd's property order: load stage, order, name."""
        return (self.stage, 0, self.name)


# -- parsers -----------------------------------------------------------------


def parse_bool(value: str) -> bool:
    """qubesd's boolean literals, case-insensitive.

    Raises:
        QubesValueError: any other text.
    """
    low = value.lower()
    if low in _BOOL_FALSE:
        return False
    if low in _BOOL_TRUE:
        return True
    msg = f"Invalid literal for boolean property: {value!r}"
    raise QubesValueError(msg)


def _to_int(value: str) -> int:
    return int(value)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": _to_int,
    "bool": parse_bool,
    "IPv4Address": lambda v: str(ipaddress.IPv4Address(v)),
    "IPv6Address": lambda v: str(ipaddress.IPv6Address(v)),
    "UUID": lambda v: str(uuid.UUID(v)),
}


def sanitize(prop: PropDef, untrusted_payload: bytes) -> Any:
    """Parse a ``Set`` payload for *prop* as qubesd's ``sanitize`` does.

    Returns the value (a qube name, possibly ``""``, for ``vm`` properties).

    Raises:
        QubesValueError: non-ASCII bytes, a value that does not parse, a
            bad qube name, or a non-printable character in text.
    """
    try:
        untrusted_text = untrusted_payload.decode("ascii")
    except UnicodeDecodeError:
        if prop.kind == "vm":
            raise QubesValueError("") from None
        msg = "Non-ASCII bytes in property value"
        raise QubesValueError(msg) from None
    if prop.kind == "vm":
        if untrusted_text == "":
            return ""
        return validate_name(untrusted_text)
    if prop.parse is not None:
        try:
            return _PARSERS[prop.parse](untrusted_text)
        except QubesValueError:
            raise
        except ValueError:
            msg = f"Failed to parse property value as {prop.parse}"
            raise QubesValueError(msg) from None
    if not all(ch in _PRINTABLE for ch in untrusted_text):
        msg = "Invalid characters in property value"
        raise QubesValueError(msg)
    return untrusted_text


# -- setters (checks on the parsed value) -------------------------------------


def _forbidden(holder: Holder, prop: PropDef, value: Any) -> Any:
    msg = f"property {prop.name!r} on {holder.klass} instance cannot be set"
    raise QubesPropertyValueError(msg)


def _positive(holder: Holder, prop: PropDef, value: Any) -> Any:
    if int(value) <= 0:
        msg = f"{prop.name} must be positive"
        raise QubesPropertyValueError(msg)
    return int(value)


def _non_negative(holder: Holder, prop: PropDef, value: Any) -> Any:
    if int(value) < 0:
        msg = f"{prop.name} must be positive or zero"
        raise QubesPropertyValueError(msg)
    return int(value)


def _kernel(holder: Holder, prop: PropDef, value: Any) -> Any:
    if not value:
        return ""
    if "/" in str(value):
        msg = "Kernel name cannot contain '/'"
        raise QubesPropertyValueError(msg)
    if str(value) not in holder.app.kernels:
        msg = f"Kernel {str(value)!r} not installed"
        raise QubesPropertyValueError(msg)
    return str(value)


def _kernelopts(holder: Holder, prop: PropDef, value: Any) -> Any:
    if not value:
        return ""
    if len(str(value)) > KERNELOPTS_MAX:
        msg = "Kernelopts value too long (512 chars max)"
        raise QubesPropertyValueError(msg)
    return str(value)


def _default_user(holder: Holder, prop: PropDef, value: Any) -> Any:
    if not all(ch in _USER_CHARS for ch in str(value)):
        msg = "Username can contain only those characters: " + _USER_TEXT
        raise QubesPropertyValueError(msg)
    return str(value)


def _virt_mode(holder: Holder, prop: PropDef, value: Any) -> Any:
    low = str(value).lower()
    if low not in ("hvm", "pv", "pvh"):
        msg = "Invalid virtualization mode, supported values: hvm, pv, pvh"
        raise QubesPropertyValueError(msg)
    return low


def _mac(holder: Holder, prop: PropDef, value: Any) -> Any:
    low = str(value).lower()
    if _MAC_RE.match(low) is None:
        # qubesd raises a bare ValueError here: the reply is empty.
        msg = "Invalid MAC address value"
        raise ValueError(msg)
    return low


def _kbd_layout(holder: Holder, prop: PropDef, value: Any) -> Any:
    text = str(value)
    parts = text.split("+")
    if len(parts) != 3:
        msg = "invalid number of keyboard layout parameters"
        raise QubesPropertyValueError(msg)
    if not parts[0].isalpha():
        msg = "Invalid keyboard layout provided"
        raise QubesPropertyValueError(msg)
    if not _KBD_VARIANT_RE.match(parts[1]):
        msg = "Invalid layout variant provided"
        raise QubesPropertyValueError(msg)
    if not _KBD_OPTIONS_RE.match(parts[2]):
        msg = "Invalid layout options provided"
        raise QubesPropertyValueError(msg)
    return text


def _denied_list(holder: Holder, prop: PropDef, value: Any) -> Any:
    if not value:
        return ""
    if not re.fullmatch(r"([bump\*][0123456789abcdef\*]{6})*", str(value)):
        msg = (
            "Interface code list should be in the form chhhhhhchhhhhh...,"
            'where c is one of "b", "u", "m", "p", "*" '
            'and h is a hexdigit or "*".'
        )
        raise QubesPropertyValueError(msg)
    return str(value)


def _netvm(holder: Holder, prop: PropDef, value: Any) -> Any:
    if value is None:
        return None
    target = holder.app.domains[value]
    if not target.get_or_none("provides_network"):
        msg = f"The {value} qube does not provide network"
        raise QubesValueError(msg)
    if value == holder.name or value in holder.app.connected_to(holder.name):
        msg = "Loops in network are unsupported"
        raise QubesValueError(msg)
    return value


def _provides_network(holder: Holder, prop: PropDef, value: Any) -> Any:
    if not value and any(
        vm.get_or_none("netvm") == holder.name for vm in holder.app.qubes()
    ):
        msg = (
            "The qube is still used by other qubes, change theirs 'netvm' first"
        )
        raise QubesValueError(msg)
    return value


def _dispvm_template(holder: Holder, prop: PropDef, value: Any) -> Any:
    if not value:
        return value
    target = holder.app.domains[value]
    if not target.get_or_none("template_for_dispvms"):
        where = "system" if holder.klass == "Qubes" else f"qube {holder.name!r}"
        msg = (
            f"Cannot set invalid property to {where}, {prop.name} "
            f"{value!r} has template_for_dispvms set to False"
        )
        raise QubesPropertyValueError(msg)
    return value


def _disp_template(holder: Holder, prop: PropDef, value: Any) -> Any:
    target = holder.app.domains[value]
    if not target.get_or_none("template_for_dispvms"):
        msg = "template for disposable must have template_for_dispvms=True"
        raise QubesPropertyValueError(msg)
    return value


def _label(holder: Holder, prop: PropDef, value: Any) -> Any:
    return holder.app.get_label(str(value)).name


# -- defaults -----------------------------------------------------------------


def _const(value: Any) -> Default:
    return lambda holder: value


def _from_template(name: str, fallback: Default) -> Default:
    def default(holder: Holder) -> Any:
        template = holder.template_qube()
        if template is not None:
            try:
                return template.get(name)
            except NoValue:
                pass
        return fallback(holder)

    return default


def _global(name: str) -> Default:
    return lambda holder: holder.app.globals.get_or_none(name)


def _ip(holder: Holder) -> Any:
    if not holder.is_networked():
        return None
    qid = int(holder.get("qid"))
    if holder.klass == "DispVM":
        qid = int(holder.get("dispid"))
        return f"10.138.{(qid >> 8) & 0xFF}.{qid & 0xFF}"
    return f"10.137.{(qid >> 8) & 0xFF}.{qid & 0xFF}"


def _gateway(holder: Holder) -> Any:
    return holder.get("visible_ip") if holder.get("provides_network") else None


def _visible_gateway(holder: Holder) -> Any:
    netvm = holder.netvm_qube()
    return netvm.get("gateway") if netvm is not None else None


def _visible_netmask(holder: Holder) -> Any:
    netvm = holder.netvm_qube()
    if netvm is None or not netvm.is_networked():
        return None
    return "255.255.255.255"


def _dns(holder: Holder) -> Any:
    if holder.netvm_qube() is not None or holder.get("provides_network"):
        return "10.139.1.1 10.139.1.2"
    return None


def _maxmem(holder: Holder) -> Any:
    if holder.get("virt_mode") == "hvm" and not holder.check_with_template(
        "qrexec"
    ):
        return 0
    if holder.features.get("os") == "Linux":
        value = int(holder.get("memory")) * 10
    else:
        value = 4000
    value = min(value, holder.app.host_memory_mib // 2)
    return _from_template("maxmem", _const(value))(holder)


def _icon(holder: Holder) -> Any:
    label = holder.get("label")
    if holder.klass == "TemplateVM" or holder.get_or_none(
        "template_for_dispvms"
    ):
        return f"templatevm-{label}"
    if holder.features.get("servicevm"):
        return f"servicevm-{label}"
    prefix = {
        "DispVM": "dispvm",
        "StandaloneVM": "standalonevm",
        "AdminVM": "adminvm",
    }.get(holder.klass, "appvm")
    return f"{prefix}-{label}"


def _kernelopts_default(holder: Holder) -> Any:
    if not holder.get("kernel"):
        return ""
    template = holder.template_qube()
    if template is not None:
        return template.get("kernelopts")
    return "swiotlb=2048"


def _running_int(holder: Holder) -> Any:
    return holder.xid if holder.is_running() else -1


def _start_time(holder: Holder) -> Any:
    return holder.start_time if holder.is_running() else None


def _p(name: str, **kwargs: Any) -> PropDef:
    return PropDef(name, **kwargs)


def _bool(name: str, default: bool, **kwargs: Any) -> PropDef:
    return PropDef(name, "bool", "bool", default=_const(default), **kwargs)


def _int(name: str, default: Default | None, **kwargs: Any) -> PropDef:
    return PropDef(name, "int", "int", default=default, **kwargs)


def _vm(name: str, default: Default | None, **kwargs: Any) -> PropDef:
    return PropDef(name, "vm", stage=4, default=default, **kwargs)


def _stateless(name: str, default: Default, kind: str = "str") -> PropDef:
    return PropDef(
        name,
        kind,
        kind if kind != "str" else None,
        default=default,
        setter=_forbidden,
        stateless=True,
    )


def _table(*props: PropDef) -> dict[str, PropDef]:
    return {p.name: p for p in sorted(props, key=lambda p: p.sort_key)}


_BASE = (
    PropDef("uuid", parse="UUID", write_once=True),
    PropDef("name", write_once=True),
    _int("qid", None, write_once=True),
    PropDef("label", "label", setter=_label),
    _stateless("klass", lambda h: h.klass),
    _stateless("icon", _icon),
)

_QUBESVM = (
    *_BASE,
    _p("bootmode", stage=4, default=_const("default")),
    _vm("guivm", _global("default_guivm"), allow_none=True),
    _vm("audiovm", _global("default_audiovm"), allow_none=True),
    _p(
        "virt_mode",
        default=_from_template("virt_mode", _const("pvh")),
        setter=_virt_mode,
    ),
    _bool("installed_by_rpm", False),
    _int("memory", _from_template("memory", _const(400)), setter=_positive),
    _int("maxmem", _maxmem, setter=_non_negative),
    _int("stubdom_mem", _const(None), setter=_positive),
    _int("vcpus", _from_template("vcpus", _const(2)), setter=_positive),
    _p(
        "kernel",
        default=_from_template("kernel", _global("default_kernel")),
        setter=_kernel,
    ),
    _p("kernelopts", stage=4, default=_kernelopts_default, setter=_kernelopts),
    _bool("debug", False),
    _p(
        "default_user",
        default=_from_template("default_user", _const("user")),
        setter=_default_user,
    ),
    _int(
        "qrexec_timeout",
        _from_template("qrexec_timeout", _global("default_qrexec_timeout")),
        setter=_positive,
    ),
    _int(
        "shutdown_timeout",
        _from_template("shutdown_timeout", _global("default_shutdown_timeout")),
        setter=_positive,
    ),
    _bool("autostart", False),
    _bool("include_in_backups", True),
    _int("backup_timestamp", _const(None)),
    _vm(
        "default_dispvm",
        _global("default_dispvm"),
        allow_none=True,
        setter=_dispvm_template,
    ),
    _vm(
        "management_dispvm",
        _from_template("management_dispvm", _global("management_dispvm")),
        allow_none=True,
        setter=_dispvm_template,
    ),
    PropDef(
        "updateable",
        "bool",
        "bool",
        default=lambda h: h.klass not in ("AppVM", "DispVM"),
        setter=_forbidden,
    ),
    _p("devices_denied", default=_const(""), setter=_denied_list),
    _p(
        "keyboard_layout",
        default=lambda h: _guivm_layout(h),
        setter=_kbd_layout,
    ),
    _stateless("xid", _running_int, "int"),
    _stateless("stubdom_uuid", _const("")),
    _stateless("stubdom_xid", _const(-1), "int"),
    _stateless("start_time", _start_time),
    # network (qubes/vm/mix/net.py)
    _p("mac", default=_const("00:16:3e:5e:6c:00"), setter=_mac),
    _p("ip", parse="IPv4Address", default=_ip),
    _p("ip6", parse="IPv6Address", default=_const(None)),
    _bool("provides_network", False, setter=_provides_network),
    _stateless("visible_ip", lambda h: h.get("ip")),
    _stateless("visible_ip6", lambda h: h.get("ip6")),
    _stateless("visible_gateway", _visible_gateway),
    _stateless("visible_gateway6", _const(None)),
    _stateless("visible_netmask", _visible_netmask),
    _stateless("gateway", _gateway),
    _stateless("gateway6", _const(None)),
    _stateless("dns", _dns),
)

_NETVM = _vm("netvm", _global("default_netvm"), allow_none=True, setter=_netvm)
_DVM_TEMPLATE = _bool("template_for_dispvms", False)


def _guivm_layout(holder: Holder) -> Any:
    guivm = holder.get_or_none("guivm")
    if guivm is None or guivm not in holder.app.domains:
        return "us++"
    return holder.app.domains[guivm].get_or_none("keyboard_layout") or "us++"


APPVM_PROPS = _table(
    *_QUBESVM,
    _NETVM,
    _DVM_TEMPLATE,
    _vm("template", None, vmclass=("TemplateVM",)),
)
TEMPLATEVM_PROPS = _table(
    *_QUBESVM,
    _vm("netvm", _const(None), allow_none=True, setter=_netvm),
    _p("appvm_default_bootmode", stage=4, default=_const("default")),
)
STANDALONEVM_PROPS = _table(*_QUBESVM, _NETVM, _DVM_TEMPLATE)
DISPVM_PROPS = _table(
    *(
        p
        for p in _QUBESVM
        if p.name not in ("include_in_backups", "default_dispvm")
    ),
    _NETVM,
    _vm("template", None, setter=_disp_template),
    _int("dispid", None, write_once=True),
    _bool("auto_cleanup", False),
    PropDef(
        "include_in_backups",
        "bool",
        "bool",
        default=lambda h: not h.get("auto_cleanup"),
    ),
    _vm(
        "default_dispvm",
        lambda h: h.get_or_none("template"),
        allow_none=True,
        setter=_dispvm_template,
    ),
)
ADMINVM_PROPS = _table(
    PropDef("name", default=_const("dom0"), setter=_forbidden),
    _int("qid", _const(0), setter=_forbidden),
    PropDef(
        "uuid",
        default=_const("00000000-0000-0000-0000-000000000000"),
        setter=_forbidden,
    ),
    PropDef("label", "label", setter=_label),
    _stateless("klass", lambda h: h.klass),
    _stateless("icon", _icon),
    _vm(
        "default_dispvm",
        _global("default_dispvm"),
        allow_none=True,
        setter=_dispvm_template,
    ),
    _bool("include_in_backups", True),
    PropDef(
        "updateable", "bool", "bool", default=_const(True), setter=_forbidden
    ),
    _p("devices_denied", default=_const(""), setter=_denied_list),
    _p("keyboard_layout", default=_const("us++"), setter=_kbd_layout),
    _int("maxmem", lambda h: h.app.dom0_maxmem_mib, setter=_forbidden),
)


def _gvm(name: str, default: Default | None, **kwargs: Any) -> PropDef:
    return PropDef(name, "vm", stage=3, default=default, **kwargs)


GLOBAL_PROPS = _table(
    _gvm("default_guivm", _const("dom0"), allow_none=True),
    _gvm("default_audiovm", _const("dom0"), allow_none=True),
    _gvm("default_netvm", _const(None), allow_none=True),
    _gvm(
        "default_template",
        _const(None),
        allow_none=True,
        vmclass=("TemplateVM",),
    ),
    _gvm("updatevm", _const(None), allow_none=True),
    _gvm("clockvm", _const(None), allow_none=True),
    PropDef("default_kernel", stage=3, setter=_kernel),
    _gvm(
        "default_dispvm",
        _const(None),
        allow_none=True,
        setter=_dispvm_template,
    ),
    _gvm(
        "management_dispvm",
        _const(None),
        allow_none=True,
        setter=_dispvm_template,
    ),
    PropDef("default_pool", stage=3, default=_const("varlibqubes")),
    *(
        PropDef(
            f"default_pool_{vol}",
            stage=3,
            default=lambda h: h.get("default_pool"),
        )
        for vol in ("private", "root", "volatile")
    ),
    PropDef("default_pool_kernel", stage=3, default=_const("linux-kernel")),
    PropDef(
        "default_qrexec_timeout", "int", "int", stage=3, default=_const(60)
    ),
    PropDef(
        "default_shutdown_timeout", "int", "int", stage=3, default=_const(60)
    ),
    PropDef("stats_interval", "int", "int", stage=3, default=_const(3)),
    PropDef("check_updates_vm", "bool", "bool", stage=3, default=_const(True)),
    PropDef(
        "maxmem",
        "int",
        "int",
        stage=3,
        default=lambda h: h.app.host_memory_mib,
        setter=_forbidden,
    ),
    PropDef(
        "no_cpus", "int", "int", stage=3, default=_const(4), setter=_forbidden
    ),
)
