# SPDX-License-Identifier: MIT
"""The NixOS operations in the shape the D-Bus jobs call them.

``nexusd.dbus.jobs`` looks operations up by D-Bus method name
(``ImportTemplate``, ``CreateQube``, ``Apply``, ``Diff``, ``AuditQubes``) and
calls each with one job context: the caller's options (untrusted), who
asked, a progress reporter and, for an import, the image as a file the
caller opened. These adapters parse the options strictly and call
:class:`~nexusd.nixos.service.NixosService`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from nexusd.errors import BadArgument
from nexusd.nixos.service import NixosService

__all__ = ["JOB_NAMES", "job_operations"]

#: Bytes per MiB, for progress messages.
_MIB = 1024 * 1024
#: D-Bus job name of each operation.
JOB_NAMES = {
    "import_template": "ImportTemplate",
    "create_qube": "CreateQube",
    "apply": "Apply",
    "diff": "Diff",
    "audit": "AuditQubes",
}


class _JobContext(Protocol):
    untrusted_options: dict[str, Any]
    actor: str
    via: str
    image: Any

    def progress(self, fraction: float, message: str = "") -> None: ...


JobOperation = Callable[[Any], Awaitable[dict[str, Any]]]


def _parse_options(
    *,
    untrusted_options: dict[str, Any],
    strings: tuple[str, ...] = (),
    others: dict[str, type] | None = None,
) -> dict[str, Any]:
    """Return the known options, each of its type (a bool is no int).

    The values' grammars are checked by the operation itself.

    Raises:
        BadArgument: an unknown key, or a value of the wrong type.
    """
    kinds: dict[str, type] = {key: str for key in strings}
    kinds.update(others or {})
    found: dict[str, Any] = {}
    for key, value in untrusted_options.items():
        kind = kinds.get(key)
        if kind is None:
            msg = f"unknown option {key[:64]!r}"
            raise BadArgument(msg)
        if not isinstance(value, kind) or (
            kind is int and isinstance(value, bool)
        ):
            msg = f"option {key!r} must be of type {kind.__name__}"
            raise BadArgument(msg)
        found[key] = value
    return found


def _bytes_progress(job: _JobContext) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        job.progress(
            done / total if total else -1.0,
            f"{done // _MIB} of {total // _MIB} MiB",
        )

    return report


def _steps_progress(job: _JobContext) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        job.progress(done / total if total else 1.0, f"{done} of {total}")

    return report


def job_operations(service: NixosService) -> dict[str, JobOperation]:
    """The operations by D-Bus job name, each taking a job context."""

    async def import_template(job: _JobContext) -> dict[str, Any]:
        options = _parse_options(
            untrusted_options=job.untrusted_options,
            strings=("name", "sha256", "label", "virt_mode", "kernel"),
            others={"gui": bool},
        )
        if "name" not in options or job.image is None:
            msg = "a template import needs a name and the image"
            raise BadArgument(msg)
        return await service.import_template(
            image=job.image,
            progress=_bytes_progress(job),
            actor=job.actor,
            via=job.via,
            **options,
        )

    async def create_qube(job: _JobContext) -> dict[str, Any]:
        options = _parse_options(
            untrusted_options=job.untrusted_options,
            strings=("name", "template", "label", "netvm", "class"),
            others={"max_containers": int},
        )
        if not {"name", "template", "label"} <= options.keys():
            msg = "a qube needs a name, a template and a label"
            raise BadArgument(msg)
        return await service.create_qube(
            name=options["name"],
            template=options["template"],
            label=options["label"],
            netvm=options.get("netvm"),
            klass=options.get("class", "AppVM"),
            quota=options.get("max_containers"),
            actor=job.actor,
            via=job.via,
        )

    # Apply and Diff read only the configured file: a path from the bus
    # would let a caller make nexusd, as root, read any file.
    async def apply(job: _JobContext) -> dict[str, Any]:
        _parse_options(untrusted_options=job.untrusted_options)
        return await service.apply(
            progress=_steps_progress(job), actor=job.actor
        )

    async def diff(job: _JobContext) -> dict[str, Any]:
        _parse_options(untrusted_options=job.untrusted_options)
        return await service.diff()

    async def audit(job: _JobContext) -> dict[str, Any]:
        _parse_options(untrusted_options=job.untrusted_options)
        return await service.audit()

    by_name = {
        "import_template": import_template,
        "create_qube": create_qube,
        "apply": apply,
        "diff": diff,
        "audit": audit,
    }
    return {JOB_NAMES[name]: op for name, op in by_name.items()}
