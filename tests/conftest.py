# SPDX-License-Identifier: MIT
"""Fixtures shared by every test module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import structlog

#: The read-only shared/ folder that lies beside the checkout (here and in CI).
SHARED = Path(__file__).resolve().parents[2] / "shared"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ``shared/`` folder; tests copy from it, never write."""
    if not SHARED.is_dir():
        pytest.fail(f"shared/ not found beside the checkout at {SHARED}")
    return SHARED


@pytest.fixture
def qubes_policy_copy(tmp_path: Path, shared_dir: Path) -> Path:
    """A writable copy of the real Qubes policy fixtures."""
    dest = tmp_path / "qubes-policy"
    shutil.copytree(shared_dir / "fixtures" / "qubes-policy", dest)
    return dest


@pytest.fixture(autouse=True)
def _fresh_structlog():
    """A test that runs a command's main() (which configures structlog for
    its process) must not change what later tests' loggers do."""
    yield
    structlog.reset_defaults()
