# SPDX-License-Identifier: MIT
"""The marks nexusd and Qubes put on templates and qubes, and how to read them.

Feature values here are read back from qubesd, but several of them
(``os-distribution``, ``whonix-gw``, ...) are set on a template at the
template's own request (``qubes.FeaturesRequest``), so they are compared as
untrusted text and never used beyond a yes/no answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = [
    "AGENT_SERVICE",
    "DISTRIBUTION",
    "IMAGE_SHA256",
    "IMAGE_SIZE",
    "IMAGE_STATE",
    "NIXOS",
    "STATE_COMPLETE",
    "STATE_IMPORTING",
    "TEMPLATE_FEATURES",
    "WHONIX_TAGS",
    "is_half_made",
    "is_nixos",
    "whonix_reason",
]

#: The feature Qubes uses for a template's distribution.
DISTRIBUTION: Final = "os-distribution"
#: Its value on NixOS templates.
NIXOS: Final = "nixos"
#: The guest agent's service, enabled on every qube nexusd creates.
AGENT_SERVICE: Final = "service.nexus-agent"
#: sha256 (hex) and size (bytes) of the image a template was imported from.
IMAGE_SHA256: Final = "nexus.image-sha256"
IMAGE_SIZE: Final = "nexus.image-size"
#: Set to :data:`STATE_IMPORTING` before the image streams and to
#: :data:`STATE_COMPLETE` once it is in and verified, so a template left
#: by an import that broke off can be told from a finished one.
IMAGE_STATE: Final = "nexus.image-state"
STATE_IMPORTING: Final = "importing"
STATE_COMPLETE: Final = "complete"
#: Features every NixOS template gets; ``gui`` is added per option.
TEMPLATE_FEATURES: Final[Mapping[str, str]] = {
    "os": "Linux",
    DISTRIBUTION: NIXOS,
    "qrexec": "1",
}
#: Features the Whonix templates carry (qubes-whonix sets them).
_WHONIX_FEATURES: Final = ("whonix-gw", "whonix-ws")
_WHONIX_DISTRIBUTION: Final = "whonix"
#: Tags Qubes puts on Whonix templates and on qubes based on them.
WHONIX_TAGS: Final = frozenset({"whonix-updatevm", "anon-gateway", "anon-vm"})


def is_nixos(untrusted_features: Mapping[str, str]) -> bool:
    """Whether a template's own features say it is NixOS."""
    return untrusted_features.get(DISTRIBUTION) == NIXOS


def whonix_reason(
    untrusted_features: Mapping[str, str], tags: frozenset[str]
) -> str | None:
    """Why a qube counts as Whonix (``feature whonix-gw``...), or ``None``."""
    if untrusted_features.get(DISTRIBUTION) == _WHONIX_DISTRIBUTION:
        return f"{DISTRIBUTION}={_WHONIX_DISTRIBUTION}"
    for name in _WHONIX_FEATURES:
        if untrusted_features.get(name) == "1":
            return f"feature {name}"
    marked = sorted(WHONIX_TAGS & tags)
    if marked:
        return f"tag {marked[0]}"
    return None


def is_half_made(
    tags: frozenset[str], untrusted_features: Mapping[str, str], owned_tag: str
) -> bool:
    """Whether a template is one nexusd began to import and never finished."""
    return (
        owned_tag in tags
        and untrusted_features.get(IMAGE_STATE) == STATE_IMPORTING
    )
