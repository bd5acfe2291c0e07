# SPDX-License-Identifier: MIT
"""nexusctl, the administrator's command-line tool for nexusd."""

from __future__ import annotations

__all__: list[str] = []
