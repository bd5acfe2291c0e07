# SPDX-License-Identifier: MIT
"""Typed reads of one entry of the declared file, each problem reported with
its line: names, labels, quotas, properties, features and tags."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from nexusd.errors import BadArgument
from nexusd.names import is_qube_name
from nexusd.nixos.params import parse_quota
from nexusd.nixos.tomllines import KeyLines

__all__ = ["NAME_MAX", "VALUE_MAX", "EntryValues", "Problem"]

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
#: ``problem(key_path, message)``: note a problem at the line of key_path.
Problem = Callable[[tuple[str, ...], str], None]


def _text_value(value: object) -> str | None:
    """A TOML scalar as qubesd's text form, or ``None`` for other types."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    return None


class EntryValues:
    """Typed reads of one entry's keys, each problem reported with its line.

    Attributes:
        lines: the line of each property, feature and tag read, by
            ``property:NAME``, ``feature:NAME``, ``tag:NAME``.
    """

    def __init__(
        self,
        problem: Problem,
        lines: KeyLines,
        reserved_tags: frozenset[str],
        base: tuple[str, ...],
        body: dict[str, Any],
        kind: str,
    ) -> None:
        """Read *body*, the table at key path *base*, of a *kind* entry."""
        self._problem = problem
        self._key_lines = lines
        self._reserved_tags = reserved_tags
        self.kind = kind
        self.base = base
        self.body = body
        self.lines: dict[str, int] = {}

    def _bad(self, key: str, message: str, *sub: str) -> None:
        self._problem((*self.base, key, *sub), message)

    def boolean(self, key: str, default: bool | None) -> bool | None:
        """*key* as a boolean, or *default* when absent or wrong."""
        value = self.body.get(key, default)
        if value is not None and not isinstance(value, bool):
            self._bad(key, f"{key} must be true or false")
            return default
        return value

    def string(self, key: str) -> str | None:
        """*key* as a non-empty string, or ``None``."""
        value = self.body.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            self._bad(key, f"{key} must be a non-empty string")
            return None
        return value

    def parsed(self, key: str, parse: Any, keyword: str) -> Any:
        """*key* passed to ``parse(keyword=value)``, or ``None``."""
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
        """*key* as a qube name, or ``None``."""
        value = self.body.get(key)
        if value is not None and (
            not isinstance(value, str) or not is_qube_name(value)
        ):
            self._bad(key, f"{key} must be a qube name")
            return None
        return value

    def netvm(self) -> str | None:
        """``netvm``: a qube name, ``""`` for none, ``None`` if absent."""
        value = self.body.get("netvm")
        if value == "":
            return ""
        return self.qube_name("netvm")

    def quota(self) -> int | None:
        """``quota`` as a container quota, or ``None``."""
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
        """``properties`` as qubesd's text, reserved names refused."""
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
                self.lines[f"property:{name}"] = self._key_lines.line(
                    (*self.base, "properties", name)
                )
        return found

    def features(self) -> dict[str, str]:
        """``features`` as printable text; nexusd's own names refused."""
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
                self.lines[f"feature:{name}"] = self._key_lines.line(
                    (*self.base, "features", name)
                )
        return found

    def tags(self) -> frozenset[str]:
        """``tags``; qubesd's and nexusd's own tags refused."""
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
            elif tag in self._reserved_tags:
                self._bad("tags", f"tag {tag!r} is set by nexusd only")
            else:
                found.add(tag)
                self.lines[f"tag:{tag}"] = self._key_lines.line(
                    (*self.base, "tags")
                )
        return frozenset(found)
