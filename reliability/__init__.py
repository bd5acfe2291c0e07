# SPDX-License-Identifier: MIT
"""nexusd's reliability suite: fuzzing, crash consistency, floods, outages.

The CI tests (``tests/test_fuzz_*.py``, ``tests/test_reliability_*.py``,
``tests/test_authz_matrix.py``) run short versions of what this package
runs at length with ``python -m reliability``.
"""

from __future__ import annotations

__all__: list[str] = []
