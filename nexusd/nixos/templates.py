# SPDX-License-Identifier: MIT
"""Importing a NixOS root image as a new TemplateVM.

The order is what makes a failure safe: the image is opened first (nothing
in dom0 changes if it cannot be read); the template is created, tagged as
nexusd's and marked ``importing`` before a byte streams; the image streams
into the root volume while it is hashed, its last chunk held back until the
hash is known; only then is the template marked ``complete``. On a wrong
hash or any failure the template this call created is removed. If qubesd
is gone and cannot remove it, the error says what is left, and the mark
lets nexusd remove it once qubesd answers again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from nexusd.errors import BadArgument, NexusError
from nexusd.names import parse_qube_name
from nexusd.nixos import creating, marks
from nexusd.nixos.cleanup import discard_created, left_behind_note
from nexusd.nixos.context import Context
from nexusd.nixos.errors import ImageMismatch
from nexusd.nixos.image import ImageStream, Progress, parse_sha256
from nexusd.nixos.params import parse_kernel, parse_label, parse_virt_mode
from nexusd.qubes.errors import QubeExists

__all__ = ["DEFAULT_TEMPLATE_LABEL", "TemplateSpec", "import_template"]

log = structlog.get_logger()

#: Qubes gives templates the black label.
DEFAULT_TEMPLATE_LABEL = "black"
#: The volume the image goes into.
ROOT_VOLUME = "root"
_VIA = "template import"


@dataclass(frozen=True)
class TemplateSpec:
    """A template import, parsed.

    Attributes:
        name: the new template's name.
        image: the raw root image: an absolute path, or a file the caller
            opened.
        sha256: the hash the image must have, or ``None`` to take any.
        label: the template's label.
        virt_mode: ``pvh``, ``hvm``, ``pv``, or ``None`` for the default.
        kernel: a dom0 kernel, ``""`` for the image's own, ``None`` for the
            default.
        gui: whether the image has the Qubes GUI agent (feature ``gui``).
    """

    name: str
    image: Path | BinaryIO
    sha256: str | None = None
    label: str = DEFAULT_TEMPLATE_LABEL
    virt_mode: str | None = None
    kernel: str | None = None
    gui: bool = True

    @classmethod
    def parse(
        cls,
        *,
        untrusted_name: str,
        image: Path | str | BinaryIO,
        untrusted_sha256: str | None = None,
        untrusted_label: str | None = None,
        untrusted_virt_mode: str | None = None,
        untrusted_kernel: str | None = None,
        gui: bool = True,
    ) -> TemplateSpec:
        """Parse an import request.

        Raises:
            BadArgument: a value breaks its grammar, or a relative path
                (nexusd's working folder means nothing to the caller).
        """
        if isinstance(image, str | Path):
            image = Path(image)
            if not image.is_absolute():
                msg = "the image path must be absolute"
                raise BadArgument(msg)
        return cls(
            name=parse_qube_name(untrusted_name=untrusted_name),
            image=image,
            sha256=None
            if untrusted_sha256 is None
            else parse_sha256(untrusted_digest=untrusted_sha256),
            label=DEFAULT_TEMPLATE_LABEL
            if untrusted_label is None
            else parse_label(untrusted_label=untrusted_label),
            virt_mode=None
            if untrusted_virt_mode is None
            else parse_virt_mode(untrusted_mode=untrusted_virt_mode),
            kernel=None
            if untrusted_kernel is None
            else parse_kernel(untrusted_kernel=untrusted_kernel),
            gui=bool(gui),
        )

    def features(self) -> dict[str, str]:
        """The features a NixOS template gets before its image streams."""
        return {
            **marks.TEMPLATE_FEATURES,
            "gui": "1" if self.gui else "0",
            marks.IMAGE_STATE: marks.STATE_IMPORTING,
        }

    def properties(self) -> dict[str, str]:
        """The properties set per option, as text."""
        found = {}
        if self.virt_mode is not None:
            found["virt_mode"] = self.virt_mode
        if self.kernel is not None:
            found["kernel"] = self.kernel
        return found


async def import_template(
    ctx: Context,
    spec: TemplateSpec,
    *,
    progress: Progress | None = None,
    via: str = _VIA,
) -> dict[str, Any]:
    """Create template ``spec.name`` from ``spec.image``; see the module.

    Returns:
        The template's name, the image's sha256 and size, its properties
        and features.

    Raises:
        ImageUnreadable: the image cannot be read (nothing was created).
        QubeExists: a qube of that name exists (it is left as it is).
        ImageMismatch: the hash differs (the template was removed).
        QubesError: qubesd refused or went away; the message says what is
            left, if anything.
    """
    stream = ImageStream.open(
        spec.image, expected=spec.sha256, progress=progress
    )
    try:
        if spec.name in await ctx.port.list_qubes():
            await _replace_half_made(ctx, spec.name)
        await creating.begin(ctx, spec.name, "TemplateVM")
        try:
            await ctx.port.create_qube("TemplateVM", spec.name, spec.label)
        except QubeExists:
            await creating.end(ctx, spec.name)
            raise
        marked: list[bool] = []
        try:
            result = await _fill(ctx, spec, stream, marked)
        except BaseException as err:
            await _undo(ctx, spec, stream, err, via, marked=bool(marked))
            raise
    finally:
        stream.close()
    log.info(
        "template_imported",
        template=spec.name,
        size=stream.size,
        sha256_prefix=result["sha256"][:12],
    )
    await ctx.record(
        via=via,
        action="template_imported",
        qube=spec.name,
        obj=ROOT_VOLUME,
        detail={k: v for k, v in result.items() if k != "name"},
    )
    return result


async def _replace_half_made(ctx: Context, name: str) -> None:
    """Remove *name* if an import of nexusd's broke off while filling it.

    Raises:
        QubeExists: it is anything else, or it could not be removed.
    """
    tags = await ctx.port.get_tags(name)
    untrusted_state = await ctx.port.get_feature(name, marks.IMAGE_STATE)
    untrusted_features = {marks.IMAGE_STATE: untrusted_state or ""}
    if marks.is_half_made(tags, untrusted_features, ctx.settings.owned_tag):
        log.info("half_made_template_found", template=name)
        if await discard_created(ctx, name):
            return
    msg = f"a qube named {name!r} exists already"
    raise QubeExists(msg)


async def _fill(
    ctx: Context, spec: TemplateSpec, stream: ImageStream, marked: list[bool]
) -> dict[str, Any]:
    """Mark, configure and fill the new template; return its record.

    *marked* gets an item once the template carries nexusd's tag and the
    ``importing`` mark, from which on the sweep can recognise it.
    """
    port = ctx.port
    await port.add_tag(spec.name, ctx.settings.owned_tag)
    await port.set_feature(spec.name, marks.IMAGE_STATE, marks.STATE_IMPORTING)
    marked.append(True)
    await creating.end(ctx, spec.name)
    features = spec.features()
    for name, value in features.items():
        if name != marks.IMAGE_STATE:
            await port.set_feature(spec.name, name, value)
    for name, value in spec.properties().items():
        await port.set_property(spec.name, name, value)
    await port.import_volume(
        spec.name, ROOT_VOLUME, stream.size, stream.chunks()
    )
    if stream.digest is None:
        # The port returned without draining the stream: the import cannot
        # have been complete, whatever the port said.
        msg = f"the import into {spec.name!r} stopped before the image's end"
        raise ImageMismatch(msg)
    recorded = {
        marks.IMAGE_SHA256: stream.digest,
        marks.IMAGE_SIZE: str(stream.size),
        marks.IMAGE_STATE: marks.STATE_COMPLETE,
    }
    for name, value in recorded.items():
        await port.set_feature(spec.name, name, value)
    features.update(recorded)
    return {
        "name": spec.name,
        "image": stream.name,
        "sha256": stream.digest,
        "size": stream.size,
        "label": spec.label,
        "properties": spec.properties(),
        "features": features,
        "tags": [ctx.settings.owned_tag],
    }


async def _undo(
    ctx: Context,
    spec: TemplateSpec,
    stream: ImageStream,
    err: BaseException,
    via: str,
    *,
    marked: bool,
) -> None:
    """Remove the half-made template; add what is left to *err*'s message."""
    removed = await discard_created(ctx, spec.name)
    if removed:
        await creating.end(ctx, spec.name)
    log.warning(
        "template_import_failed",
        template=spec.name,
        error=getattr(err, "code", type(err).__name__),
        removed=removed,
    )
    if isinstance(err, ImageMismatch):
        await ctx.record(
            via=via,
            action="template_import_refused",
            qube=spec.name,
            obj=ROOT_VOLUME,
            detail={
                "image": stream.name,
                "size": stream.size,
                "expected_sha256": spec.sha256,
                "removed": removed,
            },
        )
    if not removed and isinstance(err, NexusError):
        note = left_behind_note(
            spec.name, ctx.settings.owned_tag, template=True, marked=marked
        )
        err.message += note
        err.args = (err.message,)
