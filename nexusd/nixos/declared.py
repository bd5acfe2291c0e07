# SPDX-License-Identifier: MIT
"""The declared file: the NixOS templates and qubes that should exist.

A TOML file (``/etc/nexusd/qubes.toml``)::

    [system]                    # optional: NixOS by default
    default_template = "nixos-25.05"
    default_dispvm = "nixos-dvm"

    [templates."nixos-25.05"]   # quoted: the name has a dot
    image = "images/nixos-25.05.img"   # imported when the template is
    sha256 = "0123...cdef"             # missing; relative to this file
    label = "black"
    virt_mode = "pvh"           # kernel = "" boots the image's own kernel
    gui = true
    properties = { memory = 800 }
    features = { "some-feature" = "value" }
    tags = ["web"]

    [qubes.work]
    class = "AppVM"             # or "DispVM-template"
    template = "nixos-25.05"
    label = "blue"
    netvm = "sys-firewall"      # "" for none; left out: the default
    quota = 8                   # containers (nexus.max-containers)

    [qubes.old]
    remove = true               # removed if nexusd owns it

Keys not listed are refused, every error names its line, and all errors of
a file are reported at once.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nexusd.errors import BadArgument
from nexusd.names import is_qube_name
from nexusd.nixos.errors import DeclaredFileError
from nexusd.nixos.image import parse_sha256
from nexusd.nixos.params import (
    parse_kernel,
    parse_label,
    parse_qube_class,
    parse_quota,
    parse_virt_mode,
)
from nexusd.nixos.tomllines import KeyLines

__all__ = [
    "DECLARED_MAX",
    "Declared",
    "Entry",
    "load_declared",
    "parse_declared",
]

#: Largest declared file read, in bytes.
DECLARED_MAX: Final = 1024 * 1024
#: Longest property or feature name, and feature value, passed on.
NAME_MAX: Final = 64
VALUE_MAX: Final = 1024
_PROP_RE = re.compile(r"\A[a-z][a-z0-9_]*\Z")
_FEATURE_RE = re.compile(r"\A[a-zA-Z0-9_.-]+\Z")
_TAG_RE = re.compile(r"\A[A-Za-z0-9_-]+\Z")
#: Properties the file sets through their own keys, or never.
_RESERVED_PROPS: Final = frozenset(
    {"name", "qid", "uuid", "xid", "label", "template", "netvm", "kernel"}
    | {"virt_mode", "template_for_dispvms", "installed_by_rpm", "dispid"}
)
#: nexusd's own feature namespace: set by nexusd, never by the file.
_NEXUS_FEATURES: Final = "nexus."
_TEMPLATE_KEYS: Final = frozenset(
    {"image", "sha256", "label", "virt_mode", "kernel", "gui"}
    | {"properties", "features", "tags", "remove"}
)
_QUBE_KEYS: Final = frozenset(
    {"class", "template", "label", "netvm", "quota"}
    | {"properties", "features", "tags", "remove"}
)
_SYSTEM_KEYS: Final = frozenset({"default_template", "default_dispvm"})
#: The line a change of these comes from: the key that declares it.
_KEY_LINES: Final = {
    **{
        f"property:{k}": k
        for k in ("label", "template", "netvm", "virt_mode", "kernel")
    },
    "property:template_for_dispvms": "class",
    "feature:gui": "gui",
    "feature:service.nexus-agent": "class",
    "quota": "quota",
}


@dataclass(frozen=True)
class Entry:
    """One declared template or qube.

    Attributes:
        name: the qube's name.
        kind: ``template`` or ``qube``.
        line: the line of its table in the file.
        klass: ``TemplateVM``, ``AppVM`` or ``DispVM-template``.
        remove: the file asks for it to be removed (if nexusd owns it).
        template: the template of a qube.
        label: its label, ``None`` when not declared.
        netvm: its netvm (``""`` none), ``None`` when not declared.
        quota: its container quota, ``None`` when not declared.
        image, sha256: what a missing template is imported from.
        properties: declared properties as qubesd's text (label, netvm,
            template, virt_mode, kernel included when declared).
        features: declared features as text.
        tags: declared tags.
        lines: the line of each declared property, feature and tag, by
            ``property:NAME``, ``feature:NAME``, ``tag:NAME``.
    """

    name: str
    kind: str
    line: int
    klass: str
    remove: bool = False
    template: str | None = None
    label: str | None = None
    netvm: str | None = None
    quota: int | None = None
    image: Path | None = None
    sha256: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    features: Mapping[str, str] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()
    lines: Mapping[str, int] = field(default_factory=dict)

    def line_of(self, key: str) -> int:
        """The line of ``property:NAME`` (...), else the entry's line."""
        return self.lines.get(key, self.line)


@dataclass(frozen=True)
class Declared:
    """A parsed declared file.

    Attributes:
        path: the file.
        entries: templates then qubes, each in file order.
        default_template, default_dispvm: the system's defaults to set, or
            ``None``; with their lines.
    """

    path: Path
    entries: tuple[Entry, ...] = ()
    default_template: str | None = None
    default_dispvm: str | None = None
    system_lines: Mapping[str, int] = field(default_factory=dict)

    def find(self, name: str) -> Entry | None:
        """The entry of qube *name*, if declared."""
        for entry in self.entries:
            if entry.name == name:
                return entry
        return None


def load_declared(
    path: Path, *, reserved_tags: frozenset[str] = frozenset()
) -> Declared:
    """Read and parse the declared file at *path*; see :func:`parse_declared`.

    Raises:
        DeclaredFileError: unreadable, too big, or not a valid file.
    """
    try:
        with path.open("rb") as f:
            raw = f.read(DECLARED_MAX + 1)
    except OSError as err:
        msg = f"{path}: cannot read: {err.strerror or err}"
        raise DeclaredFileError([msg]) from None
    if len(raw) > DECLARED_MAX:
        msg = f"{path}: larger than {DECLARED_MAX} bytes"
        raise DeclaredFileError([msg])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        msg = f"{path}: not UTF-8 (byte {err.start})"
        raise DeclaredFileError([msg]) from None
    return parse_declared(text, path, reserved_tags=reserved_tags)


def parse_declared(
    text: str, path: Path, *, reserved_tags: frozenset[str] = frozenset()
) -> Declared:
    """Parse the text of a declared file; *path* names it in errors.

    *reserved_tags* may not be declared: nexusd's ownership tag is set by
    nexusd on what it creates, never by a file, which would let the file
    take over a qube nexusd must not change.

    Raises:
        DeclaredFileError: every problem found, each with its line.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        line = getattr(err, "lineno", None) or _line_from_message(str(err))
        msg = f"{path}:{line}: {err}"
        raise DeclaredFileError([msg]) from None
    parser = _Parser(path, KeyLines(text), reserved_tags)
    declared = parser.parse(data)
    if parser.problems:
        raise DeclaredFileError(parser.problems)
    return declared


def _line_from_message(message: str) -> int:
    """tomllib before 3.14 puts ``(at line N, column M)`` in its message."""
    found = re.search(r"at line (\d+)", message)
    return int(found.group(1)) if found else 1


def _text_value(value: object) -> str | None:
    """A TOML scalar as qubesd's text form, or ``None`` for other types."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    return None


class _Parser:
    def __init__(
        self, path: Path, lines: KeyLines, reserved_tags: frozenset[str]
    ) -> None:
        self.path = path
        self.lines = lines
        self.reserved_tags = reserved_tags
        self.problems: list[str] = []

    def problem(self, where: tuple[str, ...], message: str) -> None:
        self.problems.append(f"{self.path}:{self.lines.line(where)}: {message}")

    def parse(self, data: dict[str, Any]) -> Declared:
        entries: list[Entry] = []
        system: dict[str, str] = {}
        for key, value in data.items():
            if key not in ("system", "templates", "qubes"):
                self.problem(
                    (key,),
                    f"unknown table or key {key!r} (expected [system],"
                    " [templates.NAME] or [qubes.NAME])",
                )
            elif not isinstance(value, dict):
                self.problem((key,), f"{key!r} must be a table")
            elif key == "system":
                system = self._system(value)
            else:
                kind = "template" if key == "templates" else "qube"
                entries.extend(self._entries(key, kind, value))
        seen: dict[str, Entry] = {}
        for entry in entries:
            if entry.name in seen:
                self.problem(
                    (
                        "qubes" if entry.kind == "qube" else "templates",
                        entry.name,
                    ),
                    f"{entry.name!r} is declared both as a template and as"
                    " a qube",
                )
            seen[entry.name] = entry
        return Declared(
            path=self.path,
            entries=tuple(
                sorted(entries, key=lambda e: (e.kind != "template", e.line))
            ),
            default_template=system.get("default_template"),
            default_dispvm=system.get("default_dispvm"),
            system_lines={k: self.lines.line(("system", k)) for k in system},
        )

    def _system(self, table: dict[str, Any]) -> dict[str, str]:
        found = {}
        for key, value in table.items():
            where = ("system", key)
            if key not in _SYSTEM_KEYS:
                self.problem(where, f"unknown key {key!r} in [system]")
            elif not isinstance(value, str) or not is_qube_name(value):
                self.problem(where, f"{key} must be a qube name")
            else:
                found[key] = value
        return found

    def _entries(
        self, section: str, kind: str, table: dict[str, Any]
    ) -> list[Entry]:
        entries = []
        for name, body in table.items():
            where = (section, name)
            if not isinstance(body, dict):
                self.problem(where, f"[{section}.{name}] must be a table")
            elif not is_qube_name(name):
                self.problem(where, f"invalid qube name {name!r}")
            else:
                entry = self._entry(section, kind, name, body)
                if entry is not None:
                    entries.append(entry)
        return entries

    def _entry(
        self, section: str, kind: str, name: str, body: dict[str, Any]
    ) -> Entry | None:
        base = (section, name)
        before = len(self.problems)
        allowed = _TEMPLATE_KEYS if kind == "template" else _QUBE_KEYS
        for key, value in body.items():
            if key not in allowed:
                hint = ""
                if isinstance(value, dict):
                    hint = (
                        " (quote a name with a dot:"
                        f' [{section}."{name}.{key}"])'
                    )
                self.problem(
                    (*base, key),
                    f"unknown key {key!r} in [{section}.{name}]{hint}",
                )
        values = _EntryValues(self, base, body, kind)
        remove = values.boolean("remove", False)
        if kind == "template":
            klass = "TemplateVM"
            image = values.string("image")
            sha256 = values.parsed("sha256", parse_sha256, "untrusted_digest")
            template = None
            label = values.parsed("label", parse_label, "untrusted_label")
            quota = None
            netvm = None
        else:
            klass = (
                values.parsed("class", parse_qube_class, "untrusted_class")
                or "AppVM"
            )
            if klass == "StandaloneVM":
                self.problem(
                    (*base, "class"),
                    "StandaloneVM is not supported yet (it needs the"
                    " template's root volume cloned)",
                )
            image = sha256 = None
            template = values.qube_name("template")
            label = values.parsed("label", parse_label, "untrusted_label")
            quota = values.quota()
            netvm = values.netvm()
            if not remove and not {"template", "label"} <= body.keys():
                self.problem(
                    base, f"qube {name!r} needs a template and a label"
                )
        properties = values.properties()
        for key, value in (("label", label), ("template", template)):
            if value is not None:
                properties[key] = value
        if netvm is not None:
            properties["netvm"] = netvm
        if kind == "template":
            mode = values.parsed("virt_mode", parse_virt_mode, "untrusted_mode")
            kernel = values.parsed("kernel", parse_kernel, "untrusted_kernel")
            for key, text in (("virt_mode", mode), ("kernel", kernel)):
                if text is not None:
                    properties[key] = text
        if klass == "DispVM-template":
            properties["template_for_dispvms"] = "True"
        features = values.features()
        for key, source in _KEY_LINES.items():
            if source in body:
                values.lines[key] = self.lines.line((*base, source))
        gui = values.boolean("gui", None) if kind == "template" else None
        if gui is not None:
            features["gui"] = "1" if gui else "0"
        if len(self.problems) > before:
            return None
        image_path = None
        if image is not None:
            image_path = Path(image)
            if not image_path.is_absolute():
                image_path = self.path.parent / image_path
        return Entry(
            name=name,
            kind=kind,
            line=self.lines.line(base),
            klass=klass,
            remove=bool(remove),
            template=template,
            label=label,
            netvm=netvm,
            quota=quota,
            image=image_path,
            sha256=sha256,
            properties=properties,
            features=features,
            tags=values.tags(),
            lines=values.lines,
        )


class _EntryValues:
    """Typed reads of one entry's keys, each problem reported with its line."""

    def __init__(
        self,
        parser: _Parser,
        base: tuple[str, ...],
        body: dict[str, Any],
        kind: str,
    ) -> None:
        self.parser = parser
        self.kind = kind
        self.base = base
        self.body = body
        self.lines: dict[str, int] = {}

    def _bad(self, key: str, message: str, *sub: str) -> None:
        self.parser.problem((*self.base, key, *sub), message)

    def boolean(self, key: str, default: bool | None) -> bool | None:
        value = self.body.get(key, default)
        if value is not None and not isinstance(value, bool):
            self._bad(key, f"{key} must be true or false")
            return default
        return value

    def string(self, key: str) -> str | None:
        value = self.body.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            self._bad(key, f"{key} must be a non-empty string")
            return None
        return value

    def parsed(self, key: str, parse: Any, keyword: str) -> Any:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self._bad(key, f"{key} must be a string")
            return None
        try:
            return parse(**{keyword: value})
        except BadArgument as err:
            self._bad(key, err.message)
            return None

    def qube_name(self, key: str) -> str | None:
        value = self.body.get(key)
        if value is not None and (
            not isinstance(value, str) or not is_qube_name(value)
        ):
            self._bad(key, f"{key} must be a qube name")
            return None
        return value

    def netvm(self) -> str | None:
        value = self.body.get("netvm")
        if value == "":
            return ""
        return self.qube_name("netvm")

    def quota(self) -> int | None:
        value = self.body.get("quota")
        if value is None:
            return None
        try:
            return parse_quota(untrusted_quota=value)
        except BadArgument as err:
            self._bad("quota", err.message)
            return None

    def _table(self, key: str) -> dict[str, Any]:
        value = self.body.get(key, {})
        if not isinstance(value, dict):
            self._bad(key, f"{key} must be a table")
            return {}
        return value

    def properties(self) -> dict[str, str]:
        found = {}
        for name, value in self._table("properties").items():
            text = _text_value(value)
            if len(name) > NAME_MAX or _PROP_RE.match(name) is None:
                self._bad("properties", f"invalid property name {name!r}", name)
            elif name in _RESERVED_PROPS:
                self._bad(
                    "properties",
                    f"property {name!r} cannot be set under properties",
                    name,
                )
            elif text is None or len(text) > VALUE_MAX:
                self._bad(
                    "properties",
                    f"property {name!r} must be a string, integer or boolean",
                    name,
                )
            else:
                found[name] = text
                self.lines[f"property:{name}"] = self.parser.lines.line(
                    (*self.base, "properties", name)
                )
        return found

    def features(self) -> dict[str, str]:
        found = {}
        for name, value in self._table("features").items():
            text = _text_value(value)
            if isinstance(value, bool):
                text = "1" if value else ""
            if len(name) > NAME_MAX or _FEATURE_RE.match(name) is None:
                self._bad("features", f"invalid feature name {name!r}", name)
            elif name.startswith(_NEXUS_FEATURES) or (
                name == "gui" and self.kind == "template"
            ):
                self._bad(
                    "features",
                    f"feature {name!r} is nexusd's (use its own key)",
                    name,
                )
            elif (
                text is None
                or len(text) > VALUE_MAX
                or not text.isascii()
                or not text.isprintable()
            ):
                self._bad(
                    "features",
                    f"feature {name!r} must be printable ASCII text",
                    name,
                )
            else:
                found[name] = text
                self.lines[f"feature:{name}"] = self.parser.lines.line(
                    (*self.base, "features", name)
                )
        return found

    def tags(self) -> frozenset[str]:
        value = self.body.get("tags", [])
        if not isinstance(value, list):
            self._bad("tags", "tags must be a list of strings")
            return frozenset()
        found = set()
        for tag in value:
            if (
                not isinstance(tag, str)
                or len(tag) > NAME_MAX
                or _TAG_RE.match(tag) is None
            ):
                self._bad("tags", f"invalid tag {tag!r}")
            elif tag.startswith("created-by-"):
                self._bad("tags", f"tag {tag!r} is set by qubesd only")
            elif tag in self.parser.reserved_tags:
                self._bad("tags", f"tag {tag!r} is set by nexusd only")
            else:
                found.add(tag)
                self.lines[f"tag:{tag}"] = self.parser.lines.line(
                    (*self.base, "tags")
                )
        return frozenset(found)
