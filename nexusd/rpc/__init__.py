# SPDX-License-Identifier: MIT
"""The qrexec socket-service server: header, bounded reads, one JSON reply."""

from __future__ import annotations
