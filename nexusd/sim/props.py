# SPDX-License-Identifier: MIT
"""Property tables of the simulated qubes and of the system.

One :class:`~nexusd.sim.propcheck.PropDef` per qubesd property: its wire
type, load stage (which orders ``GetAll``), default and setter, as qubesd
defines them (``qubes/vm/qubesvm.py``, ``qubes/app.py``). Values are kept as
plain data: qubes and labels are referenced by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nexusd.sim.propcheck import (
    Default,
    NoValue,
    PropDef,
    set_default_user,
    set_denied_list,
    set_disp_template,
    set_dispvm_template,
    set_forbidden,
    set_kbd_layout,
    set_kernel,
    set_kernelopts,
    set_label,
    set_mac,
    set_netvm,
    set_non_negative,
    set_positive,
    set_provides_network,
    set_virt_mode,
)

if TYPE_CHECKING:
    from nexusd.sim.holders import Holder

__all__ = [
    "ADMINVM_PROPS",
    "APPVM_PROPS",
    "DISPVM_PROPS",
    "GLOBAL_PROPS",
    "STANDALONEVM_PROPS",
    "TEMPLATEVM_PROPS",
]


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
    return getattr(holder, "xid", -1) if holder.is_running() else -1


def _start_time(holder: Holder) -> Any:
    return getattr(holder, "start_time", None) if holder.is_running() else None


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
        setter=set_forbidden,
        stateless=True,
    )


def _table(*props: PropDef) -> dict[str, PropDef]:
    return {p.name: p for p in sorted(props, key=lambda p: p.sort_key)}


_BASE = (
    PropDef("uuid", parse="UUID", write_once=True),
    PropDef("name", write_once=True),
    _int("qid", None, write_once=True),
    PropDef("label", "label", setter=set_label),
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
        setter=set_virt_mode,
    ),
    _bool("installed_by_rpm", False),
    _int("memory", _from_template("memory", _const(400)), setter=set_positive),
    _int("maxmem", _maxmem, setter=set_non_negative),
    _int("stubdom_mem", _const(None), setter=set_positive),
    _int("vcpus", _from_template("vcpus", _const(2)), setter=set_positive),
    _p(
        "kernel",
        default=_from_template("kernel", _global("default_kernel")),
        setter=set_kernel,
    ),
    _p(
        "kernelopts",
        stage=4,
        default=_kernelopts_default,
        setter=set_kernelopts,
    ),
    _bool("debug", False),
    _p(
        "default_user",
        default=_from_template("default_user", _const("user")),
        setter=set_default_user,
    ),
    _int(
        "qrexec_timeout",
        _from_template("qrexec_timeout", _global("default_qrexec_timeout")),
        setter=set_positive,
    ),
    _int(
        "shutdown_timeout",
        _from_template("shutdown_timeout", _global("default_shutdown_timeout")),
        setter=set_positive,
    ),
    _bool("autostart", False),
    _bool("include_in_backups", True),
    _int("backup_timestamp", _const(None)),
    _vm(
        "default_dispvm",
        _global("default_dispvm"),
        allow_none=True,
        setter=set_dispvm_template,
    ),
    _vm(
        "management_dispvm",
        _from_template("management_dispvm", _global("management_dispvm")),
        allow_none=True,
        setter=set_dispvm_template,
    ),
    PropDef(
        "updateable",
        "bool",
        "bool",
        default=lambda h: h.klass not in ("AppVM", "DispVM"),
        setter=set_forbidden,
    ),
    _p("devices_denied", default=_const(""), setter=set_denied_list),
    _p(
        "keyboard_layout",
        default=lambda h: _guivm_layout(h),
        setter=set_kbd_layout,
    ),
    _stateless("xid", _running_int, "int"),
    _stateless("stubdom_uuid", _const("")),
    _stateless("stubdom_xid", _const(-1), "int"),
    _stateless("start_time", _start_time),
    # network (qubes/vm/mix/net.py)
    _p("mac", default=_const("00:16:3e:5e:6c:00"), setter=set_mac),
    _p("ip", parse="IPv4Address", default=_ip),
    _p("ip6", parse="IPv6Address", default=_const(None)),
    _bool("provides_network", False, setter=set_provides_network),
    _stateless("visible_ip", lambda h: h.get("ip")),
    _stateless("visible_ip6", lambda h: h.get("ip6")),
    _stateless("visible_gateway", _visible_gateway),
    _stateless("visible_gateway6", _const(None)),
    _stateless("visible_netmask", _visible_netmask),
    _stateless("gateway", _gateway),
    _stateless("gateway6", _const(None)),
    _stateless("dns", _dns),
)

_NETVM = _vm(
    "netvm", _global("default_netvm"), allow_none=True, setter=set_netvm
)
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
    _vm("netvm", _const(None), allow_none=True, setter=set_netvm),
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
    _vm("template", None, setter=set_disp_template),
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
        setter=set_dispvm_template,
    ),
)
ADMINVM_PROPS = _table(
    PropDef("name", default=_const("dom0"), setter=set_forbidden),
    _int("qid", _const(0), setter=set_forbidden),
    PropDef(
        "uuid",
        default=_const("00000000-0000-0000-0000-000000000000"),
        setter=set_forbidden,
    ),
    PropDef("label", "label", setter=set_label),
    _stateless("klass", lambda h: h.klass),
    _stateless("icon", _icon),
    _vm(
        "default_dispvm",
        _global("default_dispvm"),
        allow_none=True,
        setter=set_dispvm_template,
    ),
    _bool("include_in_backups", True),
    PropDef(
        "updateable", "bool", "bool", default=_const(True), setter=set_forbidden
    ),
    _p("devices_denied", default=_const(""), setter=set_denied_list),
    _p("keyboard_layout", default=_const("us++"), setter=set_kbd_layout),
    _int("maxmem", lambda h: h.app.dom0_maxmem_mib, setter=set_forbidden),
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
    PropDef("default_kernel", stage=3, setter=set_kernel),
    _gvm(
        "default_dispvm",
        _const(None),
        allow_none=True,
        setter=set_dispvm_template,
    ),
    _gvm(
        "management_dispvm",
        _const(None),
        allow_none=True,
        setter=set_dispvm_template,
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
        setter=set_forbidden,
    ),
    PropDef(
        "no_cpus",
        "int",
        "int",
        stage=3,
        default=_const(4),
        setter=set_forbidden,
    ),
)
