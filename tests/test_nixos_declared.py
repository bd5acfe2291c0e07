# SPDX-License-Identifier: MIT
"""The declared file: what it means, and errors that name their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexusd.nixos.declared import DECLARED_MAX, load_declared, parse_declared
from nexusd.nixos.errors import DeclaredFileError
from nexusd.nixos.tomllines import KeyLines

PATH = Path("/etc/nexusd/qubes.toml")
GOOD = """\
# qubes nexusd keeps
[system]
default_template = "nixos-25.05"

[templates."nixos-25.05"]
image = "images/nixos.img"
sha256 = "AB0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"
virt_mode = "hvm"
kernel = ""
gui = false

[qubes.web]
template = "nixos-25.05"
label = "blue"
netvm = ""
quota = 4
properties = { memory = 800, include_in_backups = false }
features = { "vm-config.x" = "y" }
tags = ["web", "public"]

[qubes.dvm]
class = "DispVM-template"
template = "nixos-25.05"
label = "red"

[qubes.old]
remove = true
"""


def problems(text: str, **kwargs: object) -> list[str]:
    with pytest.raises(DeclaredFileError) as caught:
        parse_declared(text, PATH, **kwargs)
    assert caught.value.code == "declared_file_invalid"
    return caught.value.problems


class TestMeaning:
    def test_entries_carry_what_is_declared(self) -> None:
        """If the file is valid, each entry holds its class, template,
        properties (as qubesd's text), features and tags."""
        declared = parse_declared(GOOD, PATH)

        web = declared.find("web")
        assert (web.klass, web.template, web.quota) == (
            "AppVM",
            "nixos-25.05",
            4,
        )
        assert web.properties == {
            "memory": "800",
            "include_in_backups": "False",
            "label": "blue",
            "template": "nixos-25.05",
            "netvm": "",
        }
        assert web.features == {"vm-config.x": "y"}
        assert web.tags == {"web", "public"}

    def test_template_options_become_properties_and_features(self) -> None:
        """If a template declares virt_mode, kernel and gui, they become
        its properties and its gui feature; its image is resolved beside
        the file and its hash lowered."""
        template = parse_declared(GOOD, PATH).find("nixos-25.05")

        assert template.properties == {"virt_mode": "hvm", "kernel": ""}
        assert template.features == {"gui": "0"}
        assert template.image == Path("/etc/nexusd/images/nixos.img")
        assert template.sha256.startswith("ab01")

    def test_templates_come_before_qubes(self) -> None:
        """If the file is parsed, templates are listed first, then qubes in
        file order, and the system defaults are kept with their lines."""
        declared = parse_declared(GOOD, PATH)

        assert [e.name for e in declared.entries] == [
            "nixos-25.05",
            "web",
            "dvm",
            "old",
        ]
        assert declared.default_template == "nixos-25.05"
        assert declared.system_lines["default_template"] == 3

    def test_dispvm_template_wants_template_for_dispvms(self) -> None:
        """If a qube's class is DispVM-template, template_for_dispvms is
        part of what it declares."""
        dvm = parse_declared(GOOD, PATH).find("dvm")

        assert dvm.properties["template_for_dispvms"] == "True"

    def test_lines_of_keys_are_known(self) -> None:
        """If a property or feature is declared, its own line is kept."""
        web = parse_declared(GOOD, PATH).find("web")

        assert web.line == 12
        assert web.line_of("property:label") == 14
        assert web.line_of("property:memory") == 17
        assert web.line_of("feature:vm-config.x") == 18
        assert web.line_of("tag:web") == 19


class TestErrors:
    def test_syntax_error_names_its_line(self) -> None:
        """If the TOML does not parse, the error names the file and line."""
        text = '[qubes.web]\nlabel = "blue"\ntemplate = \n'

        [found] = problems(text)

        assert found.startswith(f"{PATH}:3: ")

    def test_unknown_key_names_its_line(self) -> None:
        """If an entry has an unknown key, the error names that key's line."""
        text = '[qubes.web]\ntemplate = "t"\nlabel = "blue"\ncolour = 1\n'

        [found] = problems(text)

        assert found == f"{PATH}:4: unknown key 'colour' in [qubes.web]"

    def test_bad_label_names_its_line(self) -> None:
        """If a label breaks the grammar, the error names its line."""
        text = '\n[qubes.web]\ntemplate = "t"\nlabel = "bl ue"\n'

        [found] = problems(text)

        assert found.startswith(f"{PATH}:4: invalid label name")

    def test_every_problem_is_reported(self) -> None:
        """If several entries are wrong, each problem is listed."""
        text = (
            '[qubes.a]\ntemplate = "t"\nlabel = "x"\nquota = 0\n'
            '[qubes.b]\ntemplate = "t"\nlabel = "x"\nnetvm = "no such"\n'
        )

        found = problems(text)

        assert [p.split(":")[1] for p in found] == ["4", "8"]

    def test_unquoted_dotted_name_gets_a_hint(self) -> None:
        """If a name with a dot is not quoted, the error says to quote it."""
        text = '[templates.nixos-25.05]\nimage = "/i.img"\n'

        [found] = problems(text)

        assert found.startswith(f"{PATH}:1: unknown key '05'")
        assert 'quote a name with a dot: [templates."nixos-25.05"]' in found

    def test_owned_tag_cannot_be_declared(self) -> None:
        """If the file declares nexusd's ownership tag, it is refused: a
        file must not make nexusd change a qube it does not own."""
        text = (
            '[qubes.w]\ntemplate = "t"\nlabel = "x"\ntags = ["nexus-owned"]\n'
        )

        [found] = problems(text, reserved_tags=frozenset({"nexus-owned"}))

        assert found == f"{PATH}:4: tag 'nexus-owned' is set by nexusd only"

    @pytest.mark.parametrize(
        ("body", "line", "words"),
        [
            ('label = "x"', 1, "needs a template and a label"),
            ('template = "t"\nlabel = "x"\nclass = "TemplateVM"', 4, "class"),
            (
                'template = "t"\nlabel = "x"\nclass = "StandaloneVM"',
                4,
                "not sup",
            ),
            ('template = "t"\nlabel = "x"\nremove = "yes"', 4, "true or false"),
            (
                'template = "t"\nlabel = "x"\nproperties = { name = "z" }',
                4,
                "name",
            ),
            ('template = "t"\nlabel = "x"\nproperties = { Mem = 1 }', 4, "Mem"),
            (
                'template = "t"\nlabel = "x"\nfeatures = { "nexus.q" = "1" }',
                4,
                "nexus",
            ),
            (
                'template = "t"\nlabel = "x"\nfeatures = { a = "\\u0007" }',
                4,
                "ASCII",
            ),
            (
                'template = "t"\nlabel = "x"\ntags = ["created-by-x"]',
                4,
                "qubesd",
            ),
            ('template = "t"\nlabel = "x"\ntags = "web"', 4, "list"),
            ('template = "t"\nlabel = "x"\nquota = 1001', 4, "quota"),
        ],
        ids=[
            "no-template",
            "bad-class",
            "standalone",
            "remove-not-bool",
            "reserved-property",
            "bad-property-name",
            "nexus-feature",
            "control-char-feature",
            "created-by-tag",
            "tags-not-list",
            "quota-too-big",
        ],
    )
    def test_bad_entry_names_its_line(
        self, body: str, line: int, words: str
    ) -> None:
        """If an entry's value breaks its rule, one problem names its line."""
        [found] = problems(f"[qubes.web]\n{body}\n")

        assert found.startswith(f"{PATH}:{line}: ")
        assert words in found

    def test_unknown_table_is_refused(self) -> None:
        """If the file has a table nexusd does not know, it names it."""
        [found] = problems('\n\n[qube.web]\nlabel = "x"\n')

        assert found.startswith(f"{PATH}:3: unknown table or key 'qube'")

    def test_bad_default_template_names_its_line(self) -> None:
        """If [system] names no valid qube, the error names its line."""
        [found] = problems('[system]\ndefault_template = "-x"\n')

        assert found == f"{PATH}:2: default_template must be a qube name"


class TestLoad:
    def test_file_over_the_limit_is_refused(self, tmp_path: Path) -> None:
        """If the file is larger than DECLARED_MAX, it is refused unread."""
        path = tmp_path / "qubes.toml"
        path.write_bytes(b"#" * (DECLARED_MAX + 1))

        with pytest.raises(DeclaredFileError) as caught:
            load_declared(path)

        assert "larger than" in caught.value.message

    def test_file_not_utf8_is_refused(self, tmp_path: Path) -> None:
        """If the file is not UTF-8, it is refused with the byte offset."""
        path = tmp_path / "qubes.toml"
        path.write_bytes(b"# \xff\n")

        with pytest.raises(DeclaredFileError) as caught:
            load_declared(path)

        assert "not UTF-8 (byte 2)" in caught.value.message

    def test_missing_file_is_an_error(self, tmp_path: Path) -> None:
        """If the file does not exist, the error says it cannot be read."""
        with pytest.raises(DeclaredFileError) as caught:
            load_declared(tmp_path / "absent.toml")

        assert "cannot read" in caught.value.message


class TestKeyLines:
    def test_multiline_array_lines_are_skipped(self) -> None:
        """If an array spans lines, its items are not taken for keys."""
        lines = KeyLines('[a]\nx = [\n  "y = 1",\n]\nz = 2\n')

        assert lines.line(("a", "z")) == 5
        assert lines.line(("a", "y")) == 1

    def test_multiline_string_lines_are_skipped(self) -> None:
        """If a string spans lines, its lines are not taken for keys."""
        lines = KeyLines('[a]\nx = """\nq = 1\n"""\nq = 2\n')

        assert lines.line(("a", "q")) == 5

    def test_quoted_and_dotted_keys_are_found(self) -> None:
        """If keys are quoted or dotted, their full path is found."""
        lines = KeyLines('[t."n.1"]\nf."a.b" = 1\n')

        assert lines.line(("t", "n.1")) == 1
        assert lines.line(("t", "n.1", "f", "a.b")) == 2
