# SPDX-License-Identifier: MIT
"""Settings of a simulated dom0 that real dom0 has no file for.

Today one: how the router answers a policy ``ask`` (real dom0 asks the user
in the GuiVM; the simulator answers ``allow`` or ``deny`` from here, and
``deny`` when unset).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from nexusd.sim.layout import SimLayout
from nexusd.sim.state import write_atomic

__all__ = ["ASK_ANSWERS", "Settings"]

#: How an ``ask`` may be answered.
ASK_ANSWERS = ("allow", "deny")


@dataclass(frozen=True)
class Settings:
    """The simulator's settings; ``ask`` is ``"allow"`` or ``"deny"``."""

    ask: str = "deny"

    def __post_init__(self) -> None:
        """Refuse an unknown answer.

        Raises:
            ValueError: *ask* is not ``allow`` nor ``deny``.
        """
        if self.ask not in ASK_ANSWERS:
            msg = f"ask must be one of {', '.join(ASK_ANSWERS)}"
            raise ValueError(msg)

    @classmethod
    def load(cls, layout: SimLayout) -> Settings:
        """Read the folder's settings; defaults when the file is absent or
        unreadable (an unreadable file answers ``deny``: fail closed).
        """
        try:
            data: Any = json.loads(
                layout.settings_file.read_text(encoding="utf-8")
            )
            return cls(ask=str(data.get("ask", "deny")))
        except (OSError, ValueError, AttributeError):
            return cls()

    def save(self, layout: SimLayout) -> None:
        """Write the settings atomically."""
        write_atomic(layout.settings_file, json.dumps(asdict(self), indent=1))
