# SPDX-License-Identifier: MIT
"""Grammar of a container's spec and of a guest's state report."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from nexusd.errors import BadPayload
from nexusd.names import parse_port
from nexusd.services.payload import parse_json_object, reject_unknown_keys

__all__ = [
    "MAX_PORTS",
    "ContainerSpec",
    "StateReport",
    "parse_container_spec",
    "parse_state_report",
]

MAX_PORTS = 16
MEMORY_MB_RANGE = (16, 1 << 20)
CPU_WEIGHT_RANGE = (1, 10000)
STATES = ("running", "stopped", "failed")
MESSAGE_MAX = 200
_SHA256_RE = re.compile(r"\A[0-9a-f]{64}\Z")
_MESSAGE_RE = re.compile(r"\A[\x20-\x7e]*\Z")
_SPEC_KEYS = {"ports", "resources", "autostart", "config_sha256"}
_RESOURCE_KEYS = {"memory_mb", "cpu_weight"}


@dataclass(frozen=True)
class ContainerSpec:
    """What a guest asks for when it creates a container."""

    ports: tuple[int, ...] = ()
    memory_mb: int | None = None
    cpu_weight: int | None = None
    autostart: bool = False
    config_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The spec as its canonical JSON object."""
        resources: dict[str, int] = {}
        if self.memory_mb is not None:
            resources["memory_mb"] = self.memory_mb
        if self.cpu_weight is not None:
            resources["cpu_weight"] = self.cpu_weight
        return {
            "ports": list(self.ports),
            "resources": resources,
            "autostart": self.autostart,
            "config_sha256": self.config_sha256,
        }

    def canonical(self) -> str:
        """Canonical JSON text, the form that is stored and compared."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        """Hash of the canonical form."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    @classmethod
    def from_canonical(cls, text: str) -> ContainerSpec:
        """Rebuild from what :meth:`canonical` stored (trusted)."""
        obj = json.loads(text)
        res = obj["resources"]
        return cls(
            ports=tuple(obj["ports"]),
            memory_mb=res.get("memory_mb"),
            cpu_weight=res.get("cpu_weight"),
            autostart=obj["autostart"],
            config_sha256=obj["config_sha256"],
        )


def _bounded_int(untrusted: object, key: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if isinstance(untrusted, bool) or not isinstance(untrusted, int):
        msg = f"{key} must be a whole number"
        raise BadPayload(msg)
    if not low <= untrusted <= high:
        msg = f"{key} must be from {low} to {high}"
        raise BadPayload(msg)
    return untrusted


def parse_container_spec(*, untrusted_payload: bytes) -> ContainerSpec:
    """Return the spec in a ContainerCreate payload (empty means defaults).

    Raises:
        BadPayload: not a JSON object of the known keys with valid values.
    """
    untrusted_obj = parse_json_object(
        untrusted_payload=untrusted_payload, allow_empty=True
    )
    reject_unknown_keys(untrusted_obj, _SPEC_KEYS)

    untrusted_ports = untrusted_obj.get("ports", [])
    if not isinstance(untrusted_ports, list):
        msg = "ports must be a list"
        raise BadPayload(msg)
    if len(untrusted_ports) > MAX_PORTS:
        msg = f"at most {MAX_PORTS} ports"
        raise BadPayload(msg)
    try:
        ports = [
            parse_port(untrusted_port=p, text=False) for p in untrusted_ports
        ]
    except ValueError as err:
        raise BadPayload(str(err)) from None
    if len(set(ports)) != len(ports):
        msg = "ports must be unique"
        raise BadPayload(msg)

    untrusted_res = untrusted_obj.get("resources", {})
    if not isinstance(untrusted_res, dict):
        msg = "resources must be an object"
        raise BadPayload(msg)
    reject_unknown_keys(untrusted_res, _RESOURCE_KEYS)
    memory_mb = cpu_weight = None
    if "memory_mb" in untrusted_res:
        memory_mb = _bounded_int(
            untrusted_res["memory_mb"], "resources.memory_mb", MEMORY_MB_RANGE
        )
    if "cpu_weight" in untrusted_res:
        cpu_weight = _bounded_int(
            untrusted_res["cpu_weight"],
            "resources.cpu_weight",
            CPU_WEIGHT_RANGE,
        )

    untrusted_autostart = untrusted_obj.get("autostart", False)
    if not isinstance(untrusted_autostart, bool):
        msg = "autostart must be true or false"
        raise BadPayload(msg)

    untrusted_sha = untrusted_obj.get("config_sha256")
    if untrusted_sha is not None and (
        not isinstance(untrusted_sha, str)
        or not _SHA256_RE.match(untrusted_sha)
    ):
        msg = "config_sha256 must be 64 lowercase hex digits"
        raise BadPayload(msg)

    return ContainerSpec(
        ports=tuple(sorted(ports)),
        memory_mb=memory_mb,
        cpu_weight=cpu_weight,
        autostart=untrusted_autostart,
        config_sha256=untrusted_sha,
    )


@dataclass(frozen=True)
class StateReport:
    """A guest's report of a container's actual state."""

    state: str
    message: str


def parse_state_report(*, untrusted_payload: bytes) -> StateReport:
    """Return ``{"state": ..., "message": ...}`` from a ContainerReport.

    Raises:
        BadPayload: unknown state, or a message that is not short printable
            ASCII.
    """
    untrusted_obj = parse_json_object(untrusted_payload=untrusted_payload)
    reject_unknown_keys(untrusted_obj, {"state", "message"})
    untrusted_state = untrusted_obj.get("state")
    if untrusted_state not in STATES:
        msg = "state must be one of " + ", ".join(STATES)
        raise BadPayload(msg)
    untrusted_message = untrusted_obj.get("message", "")
    if (
        not isinstance(untrusted_message, str)
        or len(untrusted_message) > MESSAGE_MAX
        or not _MESSAGE_RE.match(untrusted_message)
    ):
        msg = (
            f"message must be at most {MESSAGE_MAX} printable ASCII characters"
        )
        raise BadPayload(msg)
    return StateReport(str(untrusted_state), untrusted_message)
