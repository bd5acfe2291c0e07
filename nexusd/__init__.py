# SPDX-License-Identifier: MIT
"""nexusd: the dom0 daemon of TesseraQt (NixOS qubes, containers inside)."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
