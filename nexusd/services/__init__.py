# SPDX-License-Identifier: MIT
"""One handler per nexus.* qrexec service."""

from __future__ import annotations
