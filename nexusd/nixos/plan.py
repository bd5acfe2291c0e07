# SPDX-License-Identifier: MIT
"""The difference between the declared file and dom0: what to change, what
is reported only.

Only what the file declares is compared: a property, feature or tag the file
does not name is never changed (qubesd and Qubes tools set many). A qube
nexusd does not own (no ownership tag) is never changed: its drift is
reported. An owned qube the file does not list is reported and left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nexusd.nixos import marks
from nexusd.nixos.context import Context
from nexusd.nixos.declared import Declared, Entry
from nexusd.qubes.errors import NoSuchProperty, NoSuchQube
from nexusd.qubes.port import PropertyValue, QubeInfo

__all__ = ["Change", "Plan", "make_plan"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
#: What each action looks like in the text of a plan.
_VERBS = {
    "import-template": "import template",
    "create-qube": "create qube",
    "set-property": "set property",
    "set-feature": "set feature",
    "add-tag": "add tag",
    "remove-qube": "remove qube",
    "set-global": "set global property",
}


@dataclass(frozen=True)
class Change:
    """One change the apply would make.

    Attributes:
        qube: the qube changed, ``""`` for the system.
        action: one of ``import-template``, ``create-qube``,
            ``set-property``, ``set-feature``, ``add-tag``, ``remove-qube``,
            ``set-global``.
        line: the line of the file that asks for it.
        key: the property, feature or tag.
        old: the value now (``None``: not set, or not there).
        new: the value wanted.
    """

    qube: str
    action: str
    line: int
    key: str = ""
    old: str | None = None
    new: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The change as a JSON-able record."""
        return {
            "qube": self.qube,
            "action": self.action,
            "key": self.key,
            "old": self.old,
            "new": self.new,
            "line": self.line,
        }

    def text(self, *, named: bool = True) -> str:
        """One line for a person: ``work: set property label red -> blue``
        (without ``work:`` unless *named*)."""
        words = [_VERBS.get(self.action, self.action)]
        if named:
            words.insert(0, f"{self.qube or 'system'}:")
        if self.key:
            words.append(self.key)
        if self.action in ("set-property", "set-feature", "set-global"):
            words.append(f"{_shown(self.old)} -> {_shown(self.new)}")
        elif self.new:
            words.append(f"({self.new})")
        return " ".join(words)


def _shown(value: str | None) -> str:
    return "(unset)" if value is None else repr(value)


@dataclass
class Plan:
    """Changes to make, and what is only reported."""

    path: str
    changes: list[Change] = field(default_factory=list)
    unowned: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    undeclared: list[str] = field(default_factory=list)

    def problem(self, qube: str, line: int, message: str) -> None:
        """Note something the apply cannot fix."""
        self.problems.append({"qube": qube, "line": line, "message": message})

    def to_dict(self) -> dict[str, Any]:
        """The plan as a JSON-able record, with a text line per item."""
        text = [f"{self.path}:{c.line}: {c.text()}" for c in self.changes]
        for item in self.unowned:
            text.append(
                f"{self.path}:{item['line']}: {item['qube']}: not owned by"
                f" nexusd, left alone: {item['message']}"
            )
            for drift in item["drift"]:
                change = Change(**drift)
                text.append(
                    f"{self.path}:{change.line}:   would"
                    f" {change.text(named=False)}"
                )
        text.extend(
            f"{self.path}:{p['line']}: {p['qube'] or 'system'}: {p['message']}"
            for p in self.problems
        )
        text.extend(
            f"{name}: owned by nexusd but not declared, left alone"
            for name in self.undeclared
        )
        if not text:
            text.append(f"{self.path}: nothing to change")
        return {
            "path": self.path,
            "changes": [c.to_dict() for c in self.changes],
            "unowned": list(self.unowned),
            "problems": list(self.problems),
            "undeclared": list(self.undeclared),
            "converged": not self.changes,
            "text": text,
        }


def _same(actual: PropertyValue, wanted: str) -> bool:
    """Whether a property already has the declared value."""
    have = actual.value
    if actual.type == "bool":
        low = wanted.lower()
        want_bool = low in _TRUE if low in _TRUE | _FALSE else None
        have_bool = (have or "").lower() in _TRUE
        return want_bool is not None and have_bool == want_bool
    if actual.type == "int":
        return (
            have is not None and wanted.isdigit() and int(have) == int(wanted)
        )
    return (have or "") == wanted


class _Planner:
    def __init__(self, ctx: Context, declared: Declared) -> None:
        self.ctx = ctx
        self.declared = declared
        self.plan = Plan(str(declared.path))
        self.qubes: dict[str, QubeInfo] = {}
        self.tags: dict[str, frozenset[str]] = {}

    async def run(self) -> Plan:
        self.qubes = await self.ctx.port.list_qubes()
        for entry in self.declared.entries:
            await self._entry(entry)
        await self._system()
        await self._undeclared()
        return self.plan

    async def _tags(self, name: str) -> frozenset[str]:
        if name not in self.tags:
            self.tags[name] = await self.ctx.port.get_tags(name)
        return self.tags[name]

    def _wanted_features(self, entry: Entry) -> dict[str, str]:
        wanted = dict(entry.features)
        if entry.kind == "qube":
            wanted[marks.AGENT_SERVICE] = "1"
            if entry.quota is not None:
                wanted[self.ctx.settings.quota_feature] = str(entry.quota)
        return wanted

    def _wanted_tags(self, entry: Entry) -> frozenset[str]:
        if entry.kind == "qube":
            return entry.tags | {self.ctx.settings.guest_tag}
        return entry.tags

    async def _is_nixos_template(self, name: str) -> bool:
        info = self.qubes.get(name)
        if info is None:
            other = self.declared.find(name)
            return (
                other is not None
                and other.kind == "template"
                and not other.remove
            )
        if info.klass != "TemplateVM":
            return False
        untrusted_dist = await self.ctx.port.get_feature(
            name, marks.DISTRIBUTION
        )
        return marks.is_nixos({marks.DISTRIBUTION: untrusted_dist or ""})

    async def _entry(self, entry: Entry) -> None:
        info = self.qubes.get(entry.name)
        if entry.template is not None and not entry.remove:
            if not await self._is_nixos_template(entry.template):
                self.plan.problem(
                    entry.name,
                    entry.line_of("property:template"),
                    f"template {entry.template!r} is not a NixOS template",
                )
                return
        if info is None:
            self._missing(entry)
            return
        tags = await self._tags(entry.name)
        owned = self.ctx.settings.owned_tag in tags
        if entry.kind == "template" and not entry.remove and owned:
            untrusted_state = await self.ctx.port.get_feature(
                entry.name, marks.IMAGE_STATE
            )
            if marks.is_half_made(
                tags,
                {marks.IMAGE_STATE: untrusted_state or ""},
                self.ctx.settings.owned_tag,
            ):
                # An import broke off: importing again replaces it.
                self._missing(entry)
                return
        if entry.remove:
            if owned:
                self.plan.changes.append(
                    Change(entry.name, "remove-qube", entry.line)
                )
            else:
                self._unowned(entry, "the file asks to remove it", [])
            return
        wanted_class = "TemplateVM" if entry.kind == "template" else "AppVM"
        if info.klass != wanted_class:
            self.plan.problem(
                entry.name,
                entry.line,
                f"is a {info.klass}, declared as {entry.klass}",
            )
            return
        if entry.kind == "template" and not await self._is_nixos_template(
            entry.name
        ):
            self.plan.problem(entry.name, entry.line, "is not a NixOS template")
            return
        drift = await self._drift(entry)
        if owned:
            self.plan.changes.extend(drift)
        elif drift:
            self._unowned(entry, f"{len(drift)} difference(s)", drift)

    def _unowned(self, entry: Entry, message: str, drift: list[Change]) -> None:
        self.plan.unowned.append(
            {
                "qube": entry.name,
                "line": entry.line,
                "message": message,
                "remove": entry.remove,
                "drift": [c.to_dict() for c in drift],
            }
        )

    def _missing(self, entry: Entry) -> None:
        if entry.remove:
            return
        if entry.kind == "template":
            if entry.image is None:
                self.plan.problem(
                    entry.name,
                    entry.line,
                    "template is missing and no image is declared",
                )
                return
            self.plan.changes.append(
                Change(
                    entry.name,
                    "import-template",
                    entry.line,
                    new=str(entry.image),
                )
            )
            made = {"label", "virt_mode", "kernel"}
        else:
            self.plan.changes.append(
                Change(
                    entry.name,
                    "create-qube",
                    entry.line,
                    new=f"{entry.klass} from {entry.template}",
                )
            )
            made = {"label", "template", "netvm", "template_for_dispvms"}
        for key, value in entry.properties.items():
            if key not in made:
                self.plan.changes.append(
                    Change(
                        entry.name,
                        "set-property",
                        entry.line_of(f"property:{key}"),
                        key,
                        None,
                        value,
                    )
                )
        for key, value in entry.features.items():
            if key != "gui" or entry.kind != "template":
                self.plan.changes.append(
                    Change(
                        entry.name,
                        "set-feature",
                        entry.line_of(f"feature:{key}"),
                        key,
                        None,
                        value,
                    )
                )
        self.plan.changes.extend(
            Change(entry.name, "add-tag", entry.line_of(f"tag:{tag}"), tag)
            for tag in sorted(entry.tags)
        )

    async def _drift(self, entry: Entry) -> list[Change]:
        port = self.ctx.port
        drift = []
        for key, value in entry.properties.items():
            try:
                actual = await port.get_property(entry.name, key)
            except NoSuchProperty:
                self.plan.problem(
                    entry.name,
                    entry.line_of(f"property:{key}"),
                    f"has no property {key!r}",
                )
                continue
            if not _same(actual, value):
                drift.append(
                    Change(
                        entry.name,
                        "set-property",
                        entry.line_of(f"property:{key}"),
                        key,
                        actual.value,
                        value,
                    )
                )
        untrusted_features = await port.list_features(entry.name)
        for key, value in self._wanted_features(entry).items():
            if untrusted_features.get(key) != value:
                line = entry.line_of(f"feature:{key}")
                if key == self.ctx.settings.quota_feature:
                    line = entry.line_of("quota")
                drift.append(
                    Change(
                        entry.name,
                        "set-feature",
                        line,
                        key,
                        untrusted_features.get(key),
                        value,
                    )
                )
        have = await self._tags(entry.name)
        drift.extend(
            Change(entry.name, "add-tag", entry.line_of(f"tag:{tag}"), tag)
            for tag in sorted(self._wanted_tags(entry) - have)
        )
        return drift

    async def _system(self) -> None:
        wanted = {
            "default_template": self.declared.default_template,
            "default_dispvm": self.declared.default_dispvm,
        }
        for key, value in wanted.items():
            if value is None:
                continue
            line = self.declared.system_lines.get(key, 1)
            if key == "default_template":
                usable = await self._is_nixos_template(value)
                why = "is not a NixOS template"
            else:
                usable = await self._is_nixos_dvm_template(value)
                why = "is not a disposable template based on a NixOS template"
            if not usable:
                self.plan.problem("", line, f"{key}: {value!r} {why}")
                continue
            actual = await self.ctx.port.get_global_property(key)
            if (actual.value or "") != value:
                self.plan.changes.append(
                    Change("", "set-global", line, key, actual.value, value)
                )

    async def _is_nixos_dvm_template(self, name: str) -> bool:
        entry = self.declared.find(name)
        if entry is not None and not entry.remove:
            return entry.klass == "DispVM-template"
        info = self.qubes.get(name)
        if info is None or info.klass != "AppVM":
            return False
        port = self.ctx.port
        try:
            for_dispvms = await port.get_property(name, "template_for_dispvms")
            template = await port.get_property(name, "template")
        except (NoSuchProperty, NoSuchQube):
            return False
        return (
            _same(for_dispvms, "True")
            and template.value is not None
            and await self._is_nixos_template(template.value)
        )

    async def _undeclared(self) -> None:
        owned_tag = self.ctx.settings.owned_tag
        for name, info in sorted(self.qubes.items()):
            if info.klass == "AdminVM" or self.declared.find(name) is not None:
                continue
            try:
                tags = await self._tags(name)
            except NoSuchQube:
                continue
            if owned_tag in tags:
                self.plan.undeclared.append(name)


async def make_plan(ctx: Context, declared: Declared) -> Plan:
    """Compare *declared* with dom0 through ``ctx.port``; change nothing.

    Raises:
        QubesError: qubesd refused a read or cannot be reached.
    """
    return await _Planner(ctx, declared).run()
