# SPDX-License-Identifier: MIT
"""How qubesd parses and checks a property value before it is stored.

``sanitize`` turns a ``Set`` payload into a typed value as qubesd's
``property.sanitize`` does; the ``set_*`` functions are the per-property
setters that refuse bad values with qubesd's exception and message
(``qubes/vm/qubesvm.py``, ``qubes/vm/mix/net.py``, ``qubes/vm/__init__.py``).
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
    "Default",
    "NoValue",
    "PropDef",
    "Setter",
    "parse_bool",
    "sanitize",
    "set_default_user",
    "set_denied_list",
    "set_disp_template",
    "set_dispvm_template",
    "set_forbidden",
    "set_kbd_layout",
    "set_kernel",
    "set_kernelopts",
    "set_label",
    "set_mac",
    "set_netvm",
    "set_non_negative",
    "set_positive",
    "set_provides_network",
    "set_virt_mode",
    "validate_name",
]

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


def set_forbidden(holder: Holder, prop: PropDef, value: Any) -> Any:
    msg = f"property {prop.name!r} on {holder.klass} instance cannot be set"
    raise QubesPropertyValueError(msg)


def set_positive(holder: Holder, prop: PropDef, value: Any) -> Any:
    if int(value) <= 0:
        msg = f"{prop.name} must be positive"
        raise QubesPropertyValueError(msg)
    return int(value)


def set_non_negative(holder: Holder, prop: PropDef, value: Any) -> Any:
    if int(value) < 0:
        msg = f"{prop.name} must be positive or zero"
        raise QubesPropertyValueError(msg)
    return int(value)


def set_kernel(holder: Holder, prop: PropDef, value: Any) -> Any:
    if not value:
        return ""
    if "/" in str(value):
        msg = "Kernel name cannot contain '/'"
        raise QubesPropertyValueError(msg)
    if str(value) not in holder.app.kernels:
        msg = f"Kernel {str(value)!r} not installed"
        raise QubesPropertyValueError(msg)
    return str(value)


def set_kernelopts(holder: Holder, prop: PropDef, value: Any) -> Any:
    if not value:
        return ""
    if len(str(value)) > KERNELOPTS_MAX:
        msg = "Kernelopts value too long (512 chars max)"
        raise QubesPropertyValueError(msg)
    return str(value)


def set_default_user(holder: Holder, prop: PropDef, value: Any) -> Any:
    if not all(ch in _USER_CHARS for ch in str(value)):
        msg = "Username can contain only those characters: " + _USER_TEXT
        raise QubesPropertyValueError(msg)
    return str(value)


def set_virt_mode(holder: Holder, prop: PropDef, value: Any) -> Any:
    low = str(value).lower()
    if low not in ("hvm", "pv", "pvh"):
        msg = "Invalid virtualization mode, supported values: hvm, pv, pvh"
        raise QubesPropertyValueError(msg)
    return low


def set_mac(holder: Holder, prop: PropDef, value: Any) -> Any:
    low = str(value).lower()
    if _MAC_RE.match(low) is None:
        # qubesd raises a bare ValueError here: the reply is empty.
        msg = "Invalid MAC address value"
        raise ValueError(msg)
    return low


def set_kbd_layout(holder: Holder, prop: PropDef, value: Any) -> Any:
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


def set_denied_list(holder: Holder, prop: PropDef, value: Any) -> Any:
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


def set_netvm(holder: Holder, prop: PropDef, value: Any) -> Any:
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


def set_provides_network(holder: Holder, prop: PropDef, value: Any) -> Any:
    if not value and any(
        vm.get_or_none("netvm") == holder.name for vm in holder.app.qubes()
    ):
        msg = (
            "The qube is still used by other qubes, change theirs 'netvm' first"
        )
        raise QubesValueError(msg)
    return value


def set_dispvm_template(holder: Holder, prop: PropDef, value: Any) -> Any:
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


def set_disp_template(holder: Holder, prop: PropDef, value: Any) -> Any:
    target = holder.app.domains[value]
    if not target.get_or_none("template_for_dispvms"):
        msg = "template for disposable must have template_for_dispvms=True"
        raise QubesPropertyValueError(msg)
    return value


def set_label(holder: Holder, prop: PropDef, value: Any) -> Any:
    return holder.app.get_label(str(value)).name
