# SPDX-License-Identifier: MIT
"""Errors of the NixOS template and qube operations, each with its code."""

from __future__ import annotations

from nexusd.errors import OperationError

__all__ = [
    "DeclaredFileError",
    "ImageMismatch",
    "ImageUnreadable",
    "NotNixosTemplate",
    "Unsupported",
]


class ImageMismatch(OperationError):
    """The image's sha256 is not the one given; nothing was kept."""

    code = "image_mismatch"


class ImageUnreadable(OperationError):
    """The image is missing, not a regular file, empty or changed under us."""

    code = "image_unreadable"


class NotNixosTemplate(OperationError):
    """The template named is not a NixOS TemplateVM."""

    code = "not_nixos_template"


class Unsupported(OperationError):
    """nexusd cannot do this through the Admin API port yet."""

    code = "not_supported"


class DeclaredFileError(OperationError):
    """The declared file does not parse; each problem names its line.

    Attributes:
        problems: one ``path:line: message`` text per problem found.
    """

    code = "declared_file_invalid"

    def __init__(self, problems: list[str]) -> None:
        """Keep every problem; the message holds them one per line."""
        super().__init__("\n".join(problems))
        self.problems = list(problems)
