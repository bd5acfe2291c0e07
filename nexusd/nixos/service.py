# SPDX-License-Identifier: MIT
"""The NixOS operations as nexusd runs them: one change at a time, and a
background task that applies the declared file at start and removes the
templates an import left half-made.

Operations that change dom0 (import, create, apply, the sweep) take one
lock, so an apply never sees a template mid-import and the sweep never
removes a template another call is still filling. ``diff`` and ``audit``
only read and do not wait for it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from nexusd.config import Config
from nexusd.errors import BadArgument, NexusError
from nexusd.nixos.apply import apply_declared
from nexusd.nixos.audit import audit_qubes
from nexusd.nixos.cleanup import discard_created, find_half_made
from nexusd.nixos.context import Context
from nexusd.nixos.create import QubeSpec, create_qube
from nexusd.nixos.creating import sweep_unmarked
from nexusd.nixos.declared import Declared, load_declared
from nexusd.nixos.errors import DeclaredFileError
from nexusd.nixos.image import Progress
from nexusd.nixos.plan import make_plan
from nexusd.nixos.templates import TemplateSpec, import_template
from nexusd.qubes.errors import DaemonUnavailable
from nexusd.qubes.port import AdminPort
from nexusd.store import Store

__all__ = ["NixosService"]

log = structlog.get_logger()

#: First and longest wait between attempts while qubesd is unreachable.
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
#: Actor of the changes the start-up apply and the sweep make.
SELF_ACTOR = "nexusd"


class NixosService:
    """The five operations of ``Daemon.operations`` and their upkeep.

    Args:
        port: the Admin API port.
        config: nexusd's configuration (tags, the declared file's path).
        store: the database for the audit trail, or ``None``.
        retry_first: first wait while qubesd is away, in seconds.
        retry_max: longest wait while qubesd is away.
    """

    def __init__(
        self,
        port: AdminPort,
        config: Config,
        store: Store | None,
        *,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
    ) -> None:
        """Prepare; :meth:`run` is the background part."""
        self.port = port
        self.config = config
        self.store = store
        self.retry_first = retry_first
        self.retry_max = retry_max
        self._lock = asyncio.Lock()
        self._sweep_wanted = asyncio.Event()
        #: Set once the start-up apply was made (or found nothing to do).
        self.started = asyncio.Event()

    def context(self, actor: str = "admin") -> Context:
        """A :class:`Context` for one operation on behalf of *actor*."""
        return Context(self.port, self.config.qubes, self.store, actor)

    def _declared(self, path: Path | str | None) -> Declared:
        chosen = self.config.paths.declared_qubes if path is None else path
        chosen = Path(chosen)
        if not chosen.is_absolute():
            msg = "the declared file's path must be absolute"
            raise BadArgument(msg)
        return load_declared(
            chosen, reserved_tags=frozenset({self.config.qubes.owned_tag})
        )

    # -- operations ----------------------------------------------------------

    async def import_template(
        self,
        *,
        name: str,
        image: Path | str | BinaryIO,
        sha256: str | None = None,
        label: str | None = None,
        virt_mode: str | None = None,
        kernel: str | None = None,
        gui: bool = True,
        progress: Progress | None = None,
        actor: str = "admin",
        via: str = "template import",
    ) -> dict[str, Any]:
        """Import *image* as NixOS template *name*; see ``templates``."""
        spec = TemplateSpec.parse(
            untrusted_name=name,
            image=image,
            untrusted_sha256=sha256,
            untrusted_label=label,
            untrusted_virt_mode=virt_mode,
            untrusted_kernel=kernel,
            gui=gui,
        )
        async with self._lock:
            try:
                return await import_template(
                    self.context(actor), spec, progress=progress, via=via
                )
            except BaseException:
                # Whatever broke, a half-made template may be left: the
                # sweep checks, and removes it once qubesd answers.
                self._sweep_wanted.set()
                raise

    async def create_qube(
        self,
        *,
        name: str,
        template: str,
        label: str,
        netvm: str | None = None,
        klass: str = "AppVM",
        quota: object = None,
        actor: str = "admin",
        via: str = "qube create",
    ) -> dict[str, Any]:
        """Create NixOS qube *name* from *template*; see ``create``."""
        spec = QubeSpec.parse(
            untrusted_name=name,
            untrusted_template=template,
            untrusted_label=label,
            untrusted_netvm=netvm,
            untrusted_klass=klass,
            untrusted_quota=quota,
        )
        async with self._lock:
            return await create_qube(self.context(actor), spec, via=via)

    async def apply(
        self,
        *,
        path: Path | str | None = None,
        progress: Progress | None = None,
        actor: str = "admin",
    ) -> dict[str, Any]:
        """Apply the declared file (the configured one by default)."""
        declared = self._declared(path)
        async with self._lock:
            return await apply_declared(
                self.context(actor), declared, progress=progress
            )

    async def diff(self, *, path: Path | str | None = None) -> dict[str, Any]:
        """What :meth:`apply` would change and what it would only report."""
        declared = self._declared(path)
        return (await make_plan(self.context(), declared)).to_dict()

    async def audit(self) -> dict[str, Any]:
        """Qubes not based on a NixOS template; see ``audit``."""
        return await audit_qubes(self.context())

    def operations(self) -> dict[str, Any]:
        """The callables for ``Daemon.operations``, by name."""
        return {
            "import_template": self.import_template,
            "create_qube": self.create_qube,
            "apply": self.apply,
            "diff": self.diff,
            "audit": self.audit,
        }

    # -- upkeep --------------------------------------------------------------

    async def sweep(self) -> list[str]:
        """Remove every template an import left half-made, and every qube
        a crash left between its creation and nexusd's tag; return their
        names. Only templates with nexusd's tag and ``importing`` mark go,
        and untagged qubes whose creation nexusd had recorded.

        Raises:
            DaemonUnavailable: qubesd cannot be reached.
        """
        removed = []
        async with self._lock:
            ctx = self.context(SELF_ACTOR)
            for name in await sweep_unmarked(ctx):
                removed.append(name)
                await ctx.record(
                    via="sweep",
                    action="unmarked_qube_removed",
                    qube=name,
                    obj="qube",
                )
            for name in await find_half_made(ctx):
                if await discard_created(ctx, name):
                    removed.append(name)
                    await ctx.record(
                        via="sweep",
                        action="half_made_template_removed",
                        qube=name,
                        obj="TemplateVM",
                    )
        return removed

    async def _retrying(self, what: str, step: Any) -> Any:
        """Run *step* until qubesd answers; other errors are logged."""
        wait = self.retry_first
        while True:
            try:
                return await step()
            except DaemonUnavailable as err:
                log.warning(
                    "qubesd_unreachable",
                    during=what,
                    retry_in=wait,
                    error=str(err),
                )
            await asyncio.sleep(wait)
            wait = min(wait * 2, self.retry_max)

    async def _apply_at_start(self) -> None:
        path = self.config.paths.declared_qubes
        if not path.exists():
            log.info("declared_file_absent", path=str(path))
            return
        try:
            result = await self._retrying(
                "apply", lambda: self.apply(actor=SELF_ACTOR)
            )
        except DeclaredFileError as err:
            log.error(
                "declared_file_refused", path=str(path), problems=err.problems
            )
            return
        except NexusError as err:
            log.error("declared_apply_failed", code=err.code, error=err.message)
            return
        if not result["converged"] or result["problems"] or result["unowned"]:
            log.warning(
                "declared_not_converged",
                path=str(path),
                remaining=len(result["changes"]),
                problems=len(result["problems"]),
                unowned=len(result["unowned"]),
            )

    async def run(self) -> None:
        """Background: sweep and apply at start, then sweep when asked.

        Runs until cancelled; qubesd being away only delays it.
        """
        try:
            await self._retrying("sweep", self.sweep)
            await self._apply_at_start()
        except Exception:
            log.exception("nixos_start_failed")
        finally:
            self.started.set()
        while True:
            await self._sweep_wanted.wait()
            self._sweep_wanted.clear()
            try:
                removed = await self._retrying("sweep", self.sweep)
            except Exception:
                log.exception("half_made_sweep_failed")
                continue
            if removed:
                log.info("half_made_templates_removed", templates=removed)
