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

from nexusd.names import is_qube_name
from nexusd.nixos.entry_values import EntryValues
from nexusd.nixos.errors import DeclaredFileError
from nexusd.nixos.image import parse_sha256
from nexusd.nixos.params import (
    parse_kernel,
    parse_label,
    parse_qube_class,
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
        values = EntryValues(
            self.problem, self.lines, self.reserved_tags, base, body, kind
        )
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
