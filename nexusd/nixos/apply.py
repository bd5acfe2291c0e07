# SPDX-License-Identifier: MIT
"""Applying the declared file: make what is missing, correct what drifted.

Three passes over fresh plans: first the missing templates are imported and
the missing qubes created (templates first, so qubes find them); then the
plan is made again and every property, feature, tag and system default is
set; removals come last, once nothing declared still needs what goes. A
change that fails is reported and the others go on; if qubesd cannot be
reached the apply stops, since every later call would fail too.
"""

from __future__ import annotations

from typing import Any

import structlog

from nexusd.errors import NexusError
from nexusd.nixos.context import Context
from nexusd.nixos.create import QubeSpec, create_qube
from nexusd.nixos.declared import Declared, Entry
from nexusd.nixos.image import Progress
from nexusd.nixos.plan import Change, make_plan
from nexusd.nixos.templates import DEFAULT_TEMPLATE_LABEL, TemplateSpec
from nexusd.nixos.templates import import_template as import_image
from nexusd.qubes.errors import DaemonUnavailable

__all__ = ["apply_declared"]

log = structlog.get_logger()

_VIA = "apply"
_MAKE = ("import-template", "create-qube")
_LAST = ("remove-qube",)


async def apply_declared(
    ctx: Context, declared: Declared, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Bring dom0 to *declared*; return what was done and what is left.

    Returns:
        The final plan (``converged`` true when nothing is left to change,
        plus what is only reported), with ``applied``: each change made or
        tried, with ``ok`` and, when it failed, ``error``.

    Raises:
        DaemonUnavailable: qubesd cannot be reached; the changes made before
            are kept and recorded.
    """
    runner = _Runner(ctx, declared, progress)
    first = await make_plan(ctx, declared)
    runner.expect(len(first.changes))
    for change in first.changes:
        if change.action in _MAKE:
            await runner.run(change)
    second = await make_plan(ctx, declared)
    later = [
        c
        for c in second.changes
        if c.action not in _MAKE and c.qube not in runner.failed_to_make
    ]
    runner.expect(runner.done + len(later))
    for change in later:
        if change.action not in _LAST:
            await runner.run(change)
    for change in later:
        if change.action in _LAST:
            await runner.run(change)
    final = await make_plan(ctx, declared)
    result = final.to_dict()
    done_text = [_applied_text(declared, r) for r in runner.results]
    result["text"] = done_text + result["text"]
    result["applied"] = runner.results
    result["failed"] = sum(1 for r in runner.results if not r["ok"])
    log.info(
        "declared_applied",
        path=str(declared.path),
        changes=len(runner.results),
        failed=result["failed"],
        converged=result["converged"],
    )
    return result


def _applied_text(declared: Declared, record: dict[str, Any]) -> str:
    fields = {k: record[k] for k in ("qube", "action", "key", "old", "new")}
    change = Change(line=record["line"], **fields)
    where = f"{declared.path}:{change.line}"
    if record["ok"]:
        return f"{where}: done: {change.text()}"
    return f"{where}: FAILED: {change.text()}: {record['error']['message']}"


class _Runner:
    def __init__(
        self, ctx: Context, declared: Declared, progress: Progress | None
    ) -> None:
        self.ctx = ctx
        self.declared = declared
        self.progress = progress
        self.results: list[dict[str, Any]] = []
        self.failed_to_make: set[str] = set()
        self.done = 0
        self.total = 0

    def expect(self, total: int) -> None:
        self.total = total
        self._report()

    def _report(self) -> None:
        if self.progress is None:
            return
        try:
            self.progress(self.done, max(self.total, self.done))
        except Exception:  # noqa: BLE001 - a display must not break an apply
            log.warning("progress_report_failed", done=self.done)

    async def run(self, change: Change) -> None:
        record = change.to_dict()
        try:
            await self._do(change)
        except DaemonUnavailable:
            raise
        except NexusError as err:
            if change.action in _MAKE:
                self.failed_to_make.add(change.qube)
            record.update(ok=False, error=err.to_wire())
            log.warning(
                "declared_change_failed",
                qube=change.qube,
                action=change.action,
                key=change.key,
                code=err.code,
            )
        else:
            record["ok"] = True
            if change.action not in _MAKE:
                await self.ctx.record(
                    via=_VIA,
                    action="declared_" + change.action.replace("-", "_"),
                    qube=change.qube or "dom0",
                    obj=change.key,
                    detail={
                        "old": change.old,
                        "new": change.new,
                        "file": str(self.declared.path),
                        "line": change.line,
                    },
                )
        self.results.append(record)
        self.done += 1
        self._report()

    async def _do(self, change: Change) -> None:
        port = self.ctx.port
        if change.action == "import-template":
            await import_image(
                self.ctx, _template_spec(self._entry(change)), via=_VIA
            )
        elif change.action == "create-qube":
            await create_qube(
                self.ctx, _qube_spec(self._entry(change)), via=_VIA
            )
        elif change.action == "set-property":
            await port.set_property(change.qube, change.key, change.new or "")
        elif change.action == "set-feature":
            await port.set_feature(change.qube, change.key, change.new or "")
        elif change.action == "add-tag":
            await port.add_tag(change.qube, change.key)
        elif change.action == "set-global":
            await port.set_global_property(change.key, change.new or "")
        elif change.action == "remove-qube":
            await port.remove_qube(change.qube)

    def _entry(self, change: Change) -> Entry:
        entry = self.declared.find(change.qube)
        if entry is None:
            msg = f"no declared entry for {change.qube!r}"
            raise LookupError(msg)
        return entry


def _template_spec(entry: Entry) -> TemplateSpec:
    if entry.image is None:
        msg = f"template {entry.name!r} has no image"
        raise LookupError(msg)
    return TemplateSpec(
        name=entry.name,
        image=entry.image,
        sha256=entry.sha256,
        label=entry.label or DEFAULT_TEMPLATE_LABEL,
        virt_mode=entry.properties.get("virt_mode"),
        kernel=entry.properties.get("kernel"),
        gui=entry.features.get("gui", "1") != "0",
    )


def _qube_spec(entry: Entry) -> QubeSpec:
    if entry.template is None or entry.label is None:
        msg = f"qube {entry.name!r} has no template or label"
        raise LookupError(msg)
    return QubeSpec(
        name=entry.name,
        template=entry.template,
        label=entry.label,
        netvm=entry.netvm,
        klass=entry.klass,
        quota=entry.quota,
    )
