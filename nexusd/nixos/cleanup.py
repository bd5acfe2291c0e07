# SPDX-License-Identifier: MIT
"""Undoing a creation that failed halfway, and finding what such a failure
left behind when qubesd could not be reached to undo it.

A volume import cannot be undone halfway, so the whole template goes. Only a
qube this operation itself created is removed, never one it found.
"""

from __future__ import annotations

import structlog

from nexusd.nixos import marks
from nexusd.nixos.context import Context
from nexusd.qubes.errors import NoSuchQube, QubesError

__all__ = ["discard_created", "find_half_made", "left_behind_note"]

log = structlog.get_logger()


async def discard_created(ctx: Context, name: str) -> bool:
    """Remove *name*, which this operation created; say whether it went.

    A qube that is already gone counts as removed. Any other failure is
    logged and leaves the qube; the caller reports it.
    """
    try:
        await ctx.port.remove_qube(name)
    except NoSuchQube:
        return True
    except QubesError as err:
        log.error(
            "half_made_qube_left",
            qube=name,
            code=err.code,
            error=err.message,
        )
        return False
    log.info("half_made_qube_removed", qube=name)
    return True


def left_behind_note(
    name: str, owned_tag: str, *, template: bool, marked: bool = True
) -> str:
    """What an administrator reads about a qube that could not be removed;
    *marked*: it already carries nexusd's tag (and a template its
    ``importing`` mark), so nexusd can tell it is its own."""
    if not marked:
        return (
            f"; {'template' if template else 'qube'} {name!r} is left, made"
            f" before nexusd could mark it: qvm-remove {name} removes it"
        )
    if template:
        return (
            f"; template {name!r} is left half-made (tag {owned_tag},"
            f" feature {marks.IMAGE_STATE}={marks.STATE_IMPORTING}):"
            " nexusd removes it once qubesd answers again, or"
            f" qvm-remove {name} does"
        )
    return f"; qube {name!r} is left half-made: qvm-remove {name} removes it"


async def find_half_made(ctx: Context) -> list[str]:
    """Templates nexusd began to import and never finished, by name.

    Raises:
        DaemonUnavailable: qubesd cannot be reached.
    """
    found = []
    for info in (await ctx.port.list_qubes()).values():
        if info.klass != "TemplateVM":
            continue
        try:
            tags = await ctx.port.get_tags(info.name)
            state = await ctx.port.get_feature(info.name, marks.IMAGE_STATE)
        except NoSuchQube:
            continue
        untrusted_features = {} if state is None else {marks.IMAGE_STATE: state}
        if marks.is_half_made(tags, untrusted_features, ctx.settings.owned_tag):
            found.append(info.name)
    return found
