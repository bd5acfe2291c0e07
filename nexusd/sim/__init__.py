# SPDX-License-Identifier: MIT
"""The simulated dom0: a qubesd model, its socket, and a qrexec router."""

from __future__ import annotations
