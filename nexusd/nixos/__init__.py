# SPDX-License-Identifier: MIT
"""NixOS templates and qubes: import, creation, the declared file, audit.

:func:`register` puts the operations on a daemon: under the names
``import_template``, ``create_qube``, ``apply``, ``diff`` and ``audit``
(keyword arguments), and under the D-Bus job names of
:mod:`nexusd.nixos.jobs` (one job context each).
"""

from __future__ import annotations

from typing import Any

from nexusd.nixos.jobs import job_operations
from nexusd.nixos.service import NixosService

__all__ = ["NixosService", "register"]


def register(daemon: Any) -> NixosService:
    """Fill ``daemon.operations``; return the service, whose :meth:`run`
    the daemon starts in the background.

    *daemon* needs ``port``, ``config``, ``store`` (opened) and
    ``operations``.
    """
    service = NixosService(daemon.port, daemon.config, daemon.store)
    daemon.operations.update(service.operations())
    daemon.operations.update(job_operations(service))
    return service
