# SPDX-License-Identifier: MIT
"""The simulated dom0's state file, labels and tag grammar.

The state is one JSON document (the simulator's ``qubes.xml``) written
atomically: a temporary file beside it, fsync, rename, fsync of the folder,
so a reader in another process sees the old state or the new one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexusd.sim.holders import QUBE_CLASSES
from nexusd.sim.qubesexc import QubesInvalidTagError

if TYPE_CHECKING:
    from nexusd.sim.model import Dom0Model

__all__ = [
    "STATE_VERSION",
    "STOCK_LABELS",
    "Label",
    "dump",
    "load_into",
    "read",
    "validate_tag",
    "write_atomic",
]

#: Bumped when the state file's shape changes incompatibly.
STATE_VERSION = 1
_TAG_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
)


@dataclass(frozen=True)
class Label:
    """A qube label: index, name and ``0xRRGGBB`` colour."""

    index: int
    name: str
    color: str


STOCK_LABELS = (
    Label(1, "red", "0xcc0000"),
    Label(2, "orange", "0xf57900"),
    Label(3, "yellow", "0xedd400"),
    Label(4, "green", "0x73d216"),
    Label(5, "gray", "0x555555"),
    Label(6, "blue", "0x3465a4"),
    Label(7, "purple", "0x75507b"),
    Label(8, "black", "0x000000"),
)


def validate_tag(untrusted_tag: str) -> str:
    """Return *untrusted_tag* if qubesd's ``Tags.validate_tag`` accepts it.

    Raises:
        QubesInvalidTagError: empty, or a character outside ``[A-Za-z0-9_-]``.
    """
    if not untrusted_tag:
        msg = "tag cannot be empty"
        raise QubesInvalidTagError(msg)
    if not all(ch in _TAG_CHARS for ch in untrusted_tag):
        msg = "disallowed characters"
        raise QubesInvalidTagError(msg)
    return untrusted_tag


def read(path: Path) -> dict[str, Any]:
    """Read and version-check a state file.

    Raises:
        FileNotFoundError: no state file.
        ValueError: not JSON, or a version this code did not write.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        msg = f"{path}: unsupported state version"
        raise ValueError(msg)
    return data


def load_into(model: Dom0Model, data: dict[str, Any]) -> None:
    """Replace *model*'s labels, globals and qubes with *data*'s."""
    model.labels = {
        int(item["index"]): Label(
            int(item["index"]), item["name"], item["color"]
        )
        for item in data["labels"]
    }
    model.kernels = list(data["kernels"])
    model.host_memory_mib = int(data["host_memory_mib"])
    model.dom0_maxmem_mib = int(data["dom0_maxmem_mib"])
    model.globals.values = dict(data["globals"])
    model.domains = {}
    for item in data["domains"]:
        qube = QUBE_CLASSES[item["class"]](model)
        qube.values = dict(item["properties"])
        qube.features.update(item["features"])
        qube.tags = set(item["tags"])
        qube.power_state = item["power_state"]
        qube.xid = int(item["xid"])
        qube.start_time = item["start_time"]
        qube.volume_sizes = {k: int(v) for k, v in item["volume_sizes"].items()}
        model.domains[qube.name] = qube


def dump(model: Dom0Model) -> str:
    """The whole state as JSON text."""
    data = {
        "version": STATE_VERSION,
        "labels": [vars(lb) for lb in model.labels.values()],
        "kernels": model.kernels,
        "host_memory_mib": model.host_memory_mib,
        "dom0_maxmem_mib": model.dom0_maxmem_mib,
        "globals": model.globals.values,
        "domains": [
            {
                "class": qube.klass,
                "properties": qube.values,
                "features": qube.features,
                "tags": sorted(qube.tags),
                "power_state": qube.power_state,
                "xid": qube.xid,
                "start_time": qube.start_time,
                "volume_sizes": qube.volume_sizes,
            }
            for qube in model.qubes()
        ],
    }
    return json.dumps(data, indent=1)


def write_atomic(path: Path, text: str) -> None:
    """Replace *path* with *text* so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
