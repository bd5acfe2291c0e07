# SPDX-License-Identifier: MIT
"""The configuration file: every key documented with its default."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from nexusd.config import Config, ConfigError, load_config
from tests.conftest import REPO

SHIPPED = REPO / "etc" / "nexusd.toml"


def uncommented(text: str) -> str:
    """The shipped file with every ``#key = value`` line turned on."""
    return re.sub(r"(?m)^#(\w+ = )", r"\1", text)


class TestShippedConfig:
    def test_every_key_is_documented_with_its_default(
        self, tmp_path: Path
    ) -> None:
        """If every commented key is turned on, the result equals the
        defaults, and no setting is missing from the file."""
        text = uncommented(SHIPPED.read_text())
        path = tmp_path / "nexusd.toml"
        path.write_text(text)

        config = load_config(path)

        assert config == Config()
        for section in ("paths", "limits", "qubes"):
            for f in fields(getattr(Config(), section)):
                assert re.search(rf"(?m)^{f.name} = ", text), f.name

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            ("[limits]\nmax_payload = -1\n", "limits.max_payload"),
            ("[limits]\nmax_payload = true\n", "limits.max_payload"),
            ("[limits]\nnope = 1\n", "unknown key limits.nope"),
            ("[other]\nx = 1\n", "unknown section [other]"),
            ("[limits\n", "nexusd.toml"),
        ],
    )
    def test_bad_file_is_refused_with_its_path(
        self, tmp_path: Path, text: str, fragment: str
    ) -> None:
        """If a key, value or the syntax is wrong, ConfigError names it."""
        path = tmp_path / "nexusd.toml"
        path.write_text(text)

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert str(caught.value).startswith(str(path))
        assert fragment in str(caught.value)

    def test_sim_root_moves_paths_under_it(self, tmp_path: Path) -> None:
        """If --sim DIR is given, every path lies under DIR."""
        config = load_config(None, sim_root=tmp_path)

        for f in fields(config.paths):
            value = getattr(config.paths, f.name)
            if isinstance(value, Path):
                assert value.is_relative_to(tmp_path), f.name
