# SPDX-License-Identifier: MIT
"""nexusd's benchmark suite: call overhead, scale and policy cost.

Run it from the repository root with ``python -m bench`` (``make bench``);
it prints a table and writes ``bench/results/latest.json``. It is not part
of the test run, and no test asserts a time.
"""

from __future__ import annotations

__all__: list[str] = []
