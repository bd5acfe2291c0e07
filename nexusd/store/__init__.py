# SPDX-License-Identifier: MIT
"""nexusd's state: SQLite, the single source of truth."""

from __future__ import annotations

from nexusd.store.db import Store, StoreCorrupt

__all__ = ["Store", "StoreCorrupt"]
