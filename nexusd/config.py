# SPDX-License-Identifier: MIT
"""nexusd's configuration: a TOML file whose every key has a default.

``etc/nexusd.toml`` in the source tree (``/etc/nexusd/nexusd.toml`` in dom0)
documents each key; a missing file means all defaults. With ``--sim DIR``
the paths default to the simulated dom0's layout instead of dom0's own.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from nexusd.sim.layout import SimLayout

__all__ = [
    "Config",
    "ConfigError",
    "Limits",
    "Paths",
    "load_config",
    "replace_limits",
]

DEFAULT_CONFIG = Path("/etc/nexusd/nexusd.toml")


class ConfigError(ValueError):
    """The configuration file is unreadable or holds a wrong key or value."""


@dataclass(frozen=True)
class Paths:
    """Where nexusd finds dom0's parts and keeps its own."""

    qubesd_socket: Path = Path("/var/run/qubesd.sock")
    socket: Path = Path("/run/nexusd/qrexec.sock")
    state_dir: Path = Path("/var/lib/nexusd")
    policy_dir: Path = Path("/etc/qubes/policy.d")
    runtime_policy_dir: Path = Path("/run/qubes/policy.d")
    legacy_policy_dir: Path = Path("/etc/qubes-rpc/policy")
    links_policy_name: str = "45-nexus-links.policy"
    declared_qubes: Path = Path("/etc/nexusd/qubes.toml")

    @classmethod
    def for_sim(cls, layout: SimLayout) -> Paths:
        """Paths inside a simulated dom0 folder."""
        return cls(
            qubesd_socket=layout.qubesd_socket,
            socket=layout.nexusd_socket,
            state_dir=layout.nexusd_state_dir,
            policy_dir=layout.policy_dir,
            runtime_policy_dir=layout.runtime_policy_dir,
            legacy_policy_dir=layout.legacy_policy_dir,
            declared_qubes=layout.nexusd_config_dir / "qubes.toml",
        )


@dataclass(frozen=True)
class Limits:
    """Bounds on what callers may make nexusd do."""

    header_timeout: float = 5.0
    payload_timeout: float = 10.0
    max_payload: int = 4096
    calls_per_source: int = 4
    calls_total: int = 64
    containers_per_qube: int = 16
    containers_total: int = 4096
    links_per_qube: int = 64
    shutdown_grace: float = 5.0
    agent_sync_timeout: float = 10.0


@dataclass(frozen=True)
class QubesSettings:
    """Names nexusd uses on qubes: tags and features."""

    guest_tag: str = "nexus-guest"
    owned_tag: str = "nexus-owned"
    quota_feature: str = "nexus.max-containers"


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    paths: Paths = field(default_factory=Paths)
    limits: Limits = field(default_factory=Limits)
    qubes: QubesSettings = field(default_factory=QubesSettings)
    sim_root: Path | None = None

    @property
    def database(self) -> Path:
        """The SQLite file."""
        return self.paths.state_dir / "nexusd.sqlite3"

    @property
    def links_policy_file(self) -> Path:
        """nexusd's own runtime policy file."""
        return self.paths.runtime_policy_dir / self.paths.links_policy_name


def load_config(path: Path | None, *, sim_root: Path | None = None) -> Config:
    """Read *path* (or the default file, if it exists) over the defaults.

    Raises:
        ConfigError: unreadable TOML, an unknown section or key, or a value
            of the wrong type. The message starts with the file's path.
    """
    base = Config()
    if sim_root is not None:
        base = replace(
            base, paths=Paths.for_sim(SimLayout(sim_root)), sim_root=sim_root
        )
    if path is None:
        path = DEFAULT_CONFIG
        if not path.exists() or sim_root is not None:
            return base
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as err:
        msg = f"{path}: {err}"
        raise ConfigError(msg) from err
    sections = {"paths": base.paths, "limits": base.limits, "qubes": base.qubes}
    changed: dict[str, Any] = {}
    for name, table in data.items():
        if name not in sections or not isinstance(table, dict):
            msg = f"{path}: unknown section [{name}]"
            raise ConfigError(msg)
        changed[name] = _apply(path, name, sections[name], table)
    return replace(base, **changed)


def _apply(
    path: Path, section: str, current: Any, table: dict[str, Any]
) -> Any:
    known = {f.name: f for f in fields(current)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            msg = f"{path}: unknown key {section}.{key}"
            raise ConfigError(msg)
        default = getattr(current, key)
        values[key] = _coerce(path, f"{section}.{key}", default, value)
    return replace(current, **values)


def _coerce(path: Path, key: str, default: object, value: object) -> object:
    if isinstance(default, Path) and isinstance(value, str):
        return Path(value)
    if isinstance(default, float) and isinstance(value, int | float):
        if not isinstance(value, bool) and value > 0:
            return float(value)
    elif isinstance(default, int) and isinstance(value, int):
        if not isinstance(value, bool) and value > 0:
            return value
    elif isinstance(default, str) and isinstance(value, str) and value:
        return value
    msg = f"{path}: {key} must be like {default!r} (positive), got {value!r}"
    raise ConfigError(msg)


def replace_limits(config: Config, **changes: Any) -> Config:
    """Return *config* with some limits changed (tests, benchmarks)."""
    return replace(config, limits=replace(config.limits, **changes))
