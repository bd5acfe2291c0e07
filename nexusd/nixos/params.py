# SPDX-License-Identifier: MIT
"""Grammars of the values an administrator passes to the NixOS operations.

They come over D-Bus or from the declared file: trusted people, but text
that ends up in Admin API calls, so each is parsed to qubesd's own rules
before anything is asked of qubesd.
"""

from __future__ import annotations

import re
from typing import Final

from nexusd.errors import BadArgument
from nexusd.guests import QUOTA_MAX

__all__ = [
    "QUBE_CLASSES",
    "VIRT_MODES",
    "parse_kernel",
    "parse_label",
    "parse_qube_class",
    "parse_quota",
    "parse_virt_mode",
]

#: ``virt_mode`` values qubesd accepts.
VIRT_MODES: Final = ("pvh", "hvm", "pv")
#: Classes of qubes nexusd creates from a NixOS template.
QUBE_CLASSES: Final = ("AppVM", "DispVM-template", "StandaloneVM")
#: Longest label name and kernel version nexusd passes on.
LABEL_MAX: Final = 31
KERNEL_MAX: Final = 64
#: qubesd's label names (qubes/utils.py: validate_label_name).
_LABEL_RE = re.compile(r"\A[A-Za-z0-9_.-]+\Z")
#: A kernel is a directory name under /var/lib/qubes/vm-kernels.
_KERNEL_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._+-]*\Z")


def parse_label(*, untrusted_label: str) -> str:
    """Return a label name.

    Raises:
        BadArgument: empty, too long or outside ``[A-Za-z0-9_.-]``.
    """
    if not 0 < len(untrusted_label) <= LABEL_MAX or (
        not untrusted_label.isascii()
        or _LABEL_RE.match(untrusted_label) is None
    ):
        msg = f"invalid label name (length {len(untrusted_label)})"
        raise BadArgument(msg)
    return untrusted_label


def parse_virt_mode(*, untrusted_mode: str) -> str:
    """Return a virtualisation mode (``pvh``, ``hvm`` or ``pv``).

    Raises:
        BadArgument: any other value.
    """
    if untrusted_mode not in VIRT_MODES:
        msg = f"virt_mode must be one of {', '.join(VIRT_MODES)}"
        raise BadArgument(msg)
    return untrusted_mode


def parse_kernel(*, untrusted_kernel: str) -> str:
    """Return a kernel version, or ``""`` for the qube's own kernel.

    Raises:
        BadArgument: too long, or not a plain directory name.
    """
    if untrusted_kernel == "":
        return ""
    if len(untrusted_kernel) > KERNEL_MAX or (
        not untrusted_kernel.isascii()
        or _KERNEL_RE.match(untrusted_kernel) is None
    ):
        msg = f"invalid kernel version (length {len(untrusted_kernel)})"
        raise BadArgument(msg)
    return untrusted_kernel


def parse_qube_class(*, untrusted_class: str) -> str:
    """Return one of :data:`QUBE_CLASSES`.

    Raises:
        BadArgument: any other value.
    """
    if untrusted_class not in QUBE_CLASSES:
        msg = f"class must be one of {', '.join(QUBE_CLASSES)}"
        raise BadArgument(msg)
    return untrusted_class


def parse_quota(*, untrusted_quota: object) -> int:
    """Return a per-qube container quota, 1 to ``QUOTA_MAX``.

    Raises:
        BadArgument: not an integer in that range.
    """
    if (
        isinstance(untrusted_quota, bool)
        or not isinstance(untrusted_quota, int)
        or not 0 < untrusted_quota <= QUOTA_MAX
    ):
        msg = f"quota must be an integer from 1 to {QUOTA_MAX}"
        raise BadArgument(msg)
    return untrusted_quota
