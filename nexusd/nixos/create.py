# SPDX-License-Identifier: MIT
"""Creating a nexus guest qube from a NixOS template.

Every check that can be made before qubesd changes anything is made first
(names, the template, the netvm); a qube that was created but could not be
finished is removed again, so a failure leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from nexusd.errors import NexusError
from nexusd.names import parse_qube_name
from nexusd.nixos import creating, marks
from nexusd.nixos.cleanup import discard_created, left_behind_note
from nexusd.nixos.context import Context
from nexusd.nixos.errors import NotNixosTemplate, Unsupported
from nexusd.nixos.params import parse_label, parse_qube_class, parse_quota
from nexusd.qubes.errors import NoSuchQube, QubeExists
from nexusd.qubes.port import QubeInfo

__all__ = ["QubeSpec", "agent_features", "check_nixos_template", "create_qube"]

log = structlog.get_logger()

_VIA = "qube create"
#: The qubesd class each of nexusd's classes is created as.
_QUBESD_CLASS = {"AppVM": "AppVM", "DispVM-template": "AppVM"}


@dataclass(frozen=True)
class QubeSpec:
    """A qube creation, parsed.

    Attributes:
        name: the new qube's name.
        template: the NixOS template it is based on.
        label: its label.
        netvm: its network qube, ``""`` for none, ``None`` for the default.
        klass: ``AppVM``, ``DispVM-template`` or ``StandaloneVM``.
        quota: its container quota, or ``None`` for nexusd's default.
    """

    name: str
    template: str
    label: str
    netvm: str | None = None
    klass: str = "AppVM"
    quota: int | None = None

    @classmethod
    def parse(
        cls,
        *,
        untrusted_name: str,
        untrusted_template: str,
        untrusted_label: str,
        untrusted_netvm: str | None = None,
        untrusted_klass: str = "AppVM",
        untrusted_quota: object = None,
    ) -> QubeSpec:
        """Parse a creation request.

        Raises:
            BadArgument: a value breaks its grammar.
        """
        netvm = untrusted_netvm
        if netvm:
            netvm = parse_qube_name(untrusted_name=netvm)
        return cls(
            name=parse_qube_name(untrusted_name=untrusted_name),
            template=parse_qube_name(untrusted_name=untrusted_template),
            label=parse_label(untrusted_label=untrusted_label),
            netvm=netvm,
            klass=parse_qube_class(untrusted_class=untrusted_klass),
            quota=None
            if untrusted_quota is None
            else parse_quota(untrusted_quota=untrusted_quota),
        )


async def check_nixos_template(
    ctx: Context, qubes: dict[str, QubeInfo], template: str
) -> None:
    """Refuse *template* unless it is a TemplateVM whose own features say
    NixOS.

    Raises:
        NoSuchQube: there is no such qube.
        NotNixosTemplate: it is not a TemplateVM, or not NixOS.
    """
    info = qubes.get(template)
    if info is None:
        msg = f"no template named {template!r}"
        raise NoSuchQube(msg)
    if info.klass != "TemplateVM":
        msg = f"{template!r} is a {info.klass}, not a TemplateVM"
        raise NotNixosTemplate(msg)
    untrusted_dist = await ctx.port.get_feature(template, marks.DISTRIBUTION)
    if not marks.is_nixos({marks.DISTRIBUTION: untrusted_dist or ""}):
        msg = (
            f"template {template!r} is not NixOS (feature"
            f" {marks.DISTRIBUTION} is not {marks.NIXOS!r})"
        )
        raise NotNixosTemplate(msg)


async def create_qube(
    ctx: Context, spec: QubeSpec, *, via: str = _VIA
) -> dict[str, Any]:
    """Create the qube *spec* describes, tagged and with the agent on.

    Returns:
        The qube's name, class, template, label, netvm, tags and features.

    Raises:
        Unsupported: a StandaloneVM (see below).
        QubeExists: the name is taken (that qube is left as it is).
        NoSuchQube: the template or the netvm does not exist.
        NotNixosTemplate: the template is not a NixOS TemplateVM.
        QubesError: qubesd refused or went away; the half-made qube was
            removed, or the message says it is left.
    """
    if spec.klass == "StandaloneVM":
        # XXX: no StandaloneVM; refused; accepted because the port cannot
        # clone yet. A StandaloneVM needs its template's root volume cloned
        # (admin.vm.volume.CloneFrom/CloneTo), which the Admin API port
        # lacks; AppVMs and disposable templates cover nexus guests.
        msg = (
            "StandaloneVM needs the template's root volume cloned, which"
            " nexusd's Admin API port cannot do yet"
        )
        raise Unsupported(msg)
    qubes = await ctx.port.list_qubes()
    if spec.name in qubes:
        msg = f"a qube named {spec.name!r} exists already"
        raise QubeExists(msg)
    await check_nixos_template(ctx, qubes, spec.template)
    if spec.netvm and spec.netvm not in qubes:
        msg = f"no netvm named {spec.netvm!r}"
        raise NoSuchQube(msg)
    await creating.begin(ctx, spec.name, _QUBESD_CLASS[spec.klass])
    try:
        await ctx.port.create_qube(
            _QUBESD_CLASS[spec.klass], spec.name, spec.label, spec.template
        )
    except QubeExists:
        await creating.end(ctx, spec.name)
        raise
    try:
        result = await _finish(ctx, spec)
    except BaseException as err:
        removed = await discard_created(ctx, spec.name)
        if removed:
            await creating.end(ctx, spec.name)
        log.warning(
            "qube_create_failed",
            qube=spec.name,
            error=getattr(err, "code", type(err).__name__),
            removed=removed,
        )
        if not removed and isinstance(err, NexusError):
            err.message += left_behind_note(
                spec.name, ctx.settings.owned_tag, template=False
            )
            err.args = (err.message,)
        raise
    log.info(
        "nixos_qube_created",
        qube=spec.name,
        klass=spec.klass,
        template=spec.template,
    )
    await ctx.record(
        via=via,
        action="qube_created",
        qube=spec.name,
        obj=spec.klass,
        detail={k: v for k, v in result.items() if k != "name"},
    )
    return result


def agent_features(ctx: Context, quota: int | None) -> dict[str, str]:
    """The features every nexus guest nexusd creates gets."""
    features = {marks.AGENT_SERVICE: "1"}
    if quota is not None:
        features[ctx.settings.quota_feature] = str(quota)
    return features


async def _finish(ctx: Context, spec: QubeSpec) -> dict[str, Any]:
    port = ctx.port
    tags = [ctx.settings.owned_tag, ctx.settings.guest_tag]
    for tag in tags:
        await port.add_tag(spec.name, tag)
    await creating.end(ctx, spec.name)
    features = agent_features(ctx, spec.quota)
    for name, value in features.items():
        await port.set_feature(spec.name, name, value)
    properties: dict[str, str] = {}
    if spec.klass == "DispVM-template":
        properties["template_for_dispvms"] = "True"
    if spec.netvm is not None:
        properties["netvm"] = spec.netvm
    for name, value in properties.items():
        await port.set_property(spec.name, name, value)
    return {
        "name": spec.name,
        "class": spec.klass,
        "template": spec.template,
        "label": spec.label,
        "netvm": spec.netvm,
        "properties": properties,
        "features": features,
        "tags": tags,
    }
