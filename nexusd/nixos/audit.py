# SPDX-License-Identifier: MIT
"""The audit of dom0's qubes: which are not based on a NixOS template.

A qube's base is its template's template for a disposable, its template for
an AppVM, itself for a StandaloneVM. Whonix templates and every qube based
on them are exempt (Qubes keeps Whonix for Tor); dom0 and the templates are
listed apart. The audit only reads.

XXX: marks are the template's claims; it can lie; accepted because advisory.
A template advertises its own ``os-distribution`` and Whonix marks through
``qubes.FeaturesRequest``, so a compromised template can claim to be NixOS
or Whonix and be listed so; the audit only reports, says which mark it went
by, and the template is one the administrator installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nexusd.nixos import marks
from nexusd.nixos.context import Context
from nexusd.qubes.errors import NoSuchProperty, NoSuchQube
from nexusd.qubes.port import QubeInfo

__all__ = ["audit_qubes"]

#: Features read from each template (and StandaloneVM) to classify it.
_OS_FEATURES = (
    marks.DISTRIBUTION,
    "whonix-gw",
    "whonix-ws",
    marks.IMAGE_STATE,
    marks.IMAGE_SHA256,
)
#: Most steps followed from a qube to its base (disposable -> AppVM ->
#: template); a longer chain is a loop qubesd would not allow.
_CHAIN_MAX = 4


@dataclass(frozen=True)
class _Base:
    """What a qube is based on: a template, or itself."""

    name: str | None
    distribution: str
    exempt: str | None

    @property
    def nixos(self) -> bool:
        return self.distribution == marks.NIXOS


class _Auditor:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.qubes: dict[str, QubeInfo] = {}
        self.tags: dict[str, frozenset[str]] = {}
        self.features: dict[str, dict[str, str]] = {}

    async def load(self) -> None:
        port = self.ctx.port
        self.qubes = await port.list_qubes()
        for name, info in self.qubes.items():
            if info.klass == "AdminVM":
                continue
            try:
                self.tags[name] = await port.get_tags(name)
                if info.klass in ("TemplateVM", "StandaloneVM"):
                    untrusted_all = await port.list_features(name)
                    self.features[name] = {
                        k: v
                        for k, v in untrusted_all.items()
                        if k in _OS_FEATURES
                    }
            except NoSuchQube:
                continue

    async def template_of(self, name: str) -> str | None:
        try:
            value = await self.ctx.port.get_property(name, "template")
        except (NoSuchProperty, NoSuchQube):
            return None
        return value.value or None

    def own_base(self, name: str) -> _Base:
        untrusted_features = self.features.get(name, {})
        return _Base(
            name,
            untrusted_features.get(marks.DISTRIBUTION, "unknown"),
            marks.whonix_reason(
                untrusted_features, self.tags.get(name, frozenset())
            ),
        )

    async def base(self, name: str) -> _Base:
        current = name
        for _ in range(_CHAIN_MAX):
            info = self.qubes.get(current)
            if info is None:
                return _Base(current, "unknown", None)
            if info.klass in ("TemplateVM", "StandaloneVM"):
                return self.own_base(current)
            template = await self.template_of(current)
            if template is None:
                return _Base(None, "unknown", None)
            current = template
        return _Base(None, "unknown", None)

    async def run(self) -> dict[str, Any]:
        await self.load()
        owned_tag = self.ctx.settings.owned_tag
        report: dict[str, Any] = {
            "dom0": [],
            "templates": [],
            "nixos": [],
            "not_nixos": [],
            "exempt": [],
            "half_made": [],
        }
        for name, info in sorted(self.qubes.items()):
            if name not in self.tags and info.klass != "AdminVM":
                continue
            if info.klass == "AdminVM":
                report["dom0"].append({"name": name, "class": info.klass})
                continue
            tags = self.tags[name]
            if info.klass == "TemplateVM":
                report["templates"].append(self.template_record(name))
                if marks.is_half_made(tags, self.features[name], owned_tag):
                    report["half_made"].append(name)
                continue
            base = await self.base(name)
            record = {
                "name": name,
                "class": info.klass,
                "template": base.name if base.name != name else None,
                "distribution": base.distribution,
            }
            exempt = base.exempt or marks.whonix_reason({}, tags)
            if exempt is not None:
                report["exempt"].append({**record, "reason": exempt})
            elif base.nixos:
                report["nixos"].append(record)
            else:
                report["not_nixos"].append(record)
        report["defaults"] = await self.defaults()
        report["text"] = _text(report)
        return report

    def template_record(self, name: str) -> dict[str, Any]:
        base = self.own_base(name)
        untrusted_features = self.features[name]
        return {
            "name": name,
            "distribution": base.distribution,
            "nixos": base.nixos,
            "exempt": base.exempt,
            "owned": self.ctx.settings.owned_tag in self.tags[name],
            "image_sha256": untrusted_features.get(marks.IMAGE_SHA256),
        }

    async def defaults(self) -> dict[str, Any]:
        found = {}
        for key in ("default_template", "default_dispvm"):
            value = (await self.ctx.port.get_global_property(key)).value
            nixos = False
            if value and value in self.qubes:
                nixos = (await self.base(value)).nixos
            found[key] = {"value": value, "nixos": nixos}
        return found


def _text(report: dict[str, Any]) -> list[str]:
    lines = [
        f"dom0: {r['name']} (admin qube, not audited)" for r in report["dom0"]
    ]
    for t in report["templates"]:
        kind = "NixOS" if t["nixos"] else t["distribution"]
        extra = f", exempt: {t['exempt']}" if t["exempt"] else ""
        lines.append(f"template {t['name']}: {kind}{extra}")
    for r in report["not_nixos"]:
        lines.append(
            f"NOT NixOS: {r['name']} ({r['class']}, based on"
            f" {r['template'] or 'itself'}: {r['distribution']})"
        )
    lines.extend(
        f"exempt: {r['name']} ({r['reason']})" for r in report["exempt"]
    )
    lines.extend(f"NixOS: {r['name']}" for r in report["nixos"])
    for key, value in report["defaults"].items():
        state = "NixOS" if value["nixos"] else "not NixOS"
        lines.append(f"{key}: {value['value']} ({state})")
    lines.extend(
        f"half-made template (an import broke off): {name}"
        for name in report["half_made"]
    )
    return lines


async def audit_qubes(ctx: Context) -> dict[str, Any]:
    """List dom0's qubes by whether they are based on a NixOS template.

    Returns:
        ``dom0`` and ``templates`` apart; ``nixos``, ``not_nixos`` and
        ``exempt`` (Whonix, with the mark it went by) for the other qubes;
        ``defaults`` (whether ``default_template`` and ``default_dispvm``
        are NixOS); ``half_made`` templates; ``text``, a line per item.

    Raises:
        QubesError: qubesd refused a read or cannot be reached.
    """
    return await _Auditor(ctx).run()
