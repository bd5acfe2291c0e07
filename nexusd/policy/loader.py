# SPDX-License-Identifier: MIT
"""Loading a policy set from its folders the way qrexec does.

The set is the union of the runtime and persistent folders (same name:
runtime wins), ordered by file name, with ``!include``, ``!include-dir``,
``!include-service`` and ``!compat-4.0`` followed where they stand. Loading
never raises: every problem becomes a ``path:line: reason`` error, and a set
with errors denies everything.
"""

from __future__ import annotations

import os
import stat
import string
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

import structlog

from nexusd.policy.evaluate import PolicySet
from nexusd.policy.grammar import (
    RPCNAME_CHARSET,
    PolicySyntaxError,
    Rule,
    parse_rule_line,
    parse_service_rule_line,
    validate_service_and_argument,
)

__all__ = [
    "FILENAME_CHARSET",
    "MAX_ERRORS",
    "MAX_INCLUDE_DEPTH",
    "MAX_POLICY_FILE_BYTES",
    "MAX_SET_BYTES",
    "MAX_SET_LINES",
    "POLICY_SUFFIX",
    "check_policy_set",
    "load_policy_set",
]

log = structlog.get_logger()

POLICY_SUFFIX = ".policy"
#: qrexec's ``FILENAME_ALLOWED_CHARSET``: any other ``*.policy`` name in a
#: policy folder makes qrexec deny every call.
FILENAME_CHARSET = frozenset(string.digits + string.ascii_lowercase + "_.-")
#: Files of the legacy folder with these suffixes are skipped (qrexec's
#: ``parser_compat.IGNORED_SUFFIXES``).
_COMPAT_IGNORED_SUFFIXES = (".rpmsave", ".rpmnew", ".swp")

#: Largest policy file read; a larger one is an error.
MAX_POLICY_FILE_BYTES = 16 * 1024 * 1024
#: Deepest chain of includes; qrexec has none and would crash on a loop.
MAX_INCLUDE_DEPTH = 32
#: Lines read in all, counting a file once per inclusion.
MAX_SET_LINES = 2_000_000
#: Bytes read in all, counting a file once per inclusion.
MAX_SET_BYTES = 64 * 1024 * 1024
#: Errors collected before loading stops.
MAX_ERRORS = 100
#: Rule lines remembered as valid for checks; past it the memory starts over.
MAX_KNOWN_GOOD_LINES = 65536

#: Rule lines (stripped) that parsed before. Whether a rule line parses
#: depends on its text alone, so a check (which needs only the errors) skips
#: them: nexusd checks the whole set at every change of its links file, and
#: all but a few of that file's lines are the same as the last time.
_known_good: set[str] = set()


class _Stop(Exception):
    """Internal: too many errors or lines; stop loading."""


def _resolve(path: Path, filepath: Path, lineno: int) -> Path:
    """``path.resolve()``, with its failures as syntax errors at the line."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError) as err:
        reason = f"cannot resolve {str(path)!r}: {err}"
        raise PolicySyntaxError(filepath, lineno, reason) from err


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _decode(data: bytes, path: Path) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = data.count(b"\n", 0, err.start) + 1
        raise PolicySyntaxError(path, lineno, "not valid UTF-8") from err
    # Python's universal newlines, as qrexec's open() sees the file.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _read_bytes(path: Path) -> bytes:
    """Read a regular file, without blocking on a FIFO and within the cap."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        chunks = []
        size = 0
        while chunk := os.read(fd, 1 << 16):
            size += len(chunk)
            if size > MAX_POLICY_FILE_BYTES:
                raise OSError(f"larger than {MAX_POLICY_FILE_BYTES} bytes")
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


class _Loader:
    """One load of a policy set; collects rules and errors."""

    def __init__(
        self,
        overrides: Mapping[Path, str | None],
        legacy_dir: Path | None,
        *,
        check_only: bool = False,
    ) -> None:
        self.check_only = check_only
        self.overrides = {
            Path(path).resolve(): content for path, content in overrides.items()
        }
        self.legacy_dir = legacy_dir
        self.rules: list[Rule] = []
        self.errors: list[str] = []
        self.files: list[Path] = []
        self._stack: list[Path] = []
        self._lines = 0
        self._bytes = 0

    def error(self, err: PolicySyntaxError) -> None:
        self.errors.append(str(err))
        if len(self.errors) >= MAX_ERRORS:
            raise _Stop

    def load_dirs(self, dirs: Iterable[Path]) -> None:
        chosen: dict[str, Path] = {}
        for dirpath in dirs:
            for name, path in self.list_dir(dirpath).items():
                chosen.setdefault(name, path)
        for name in sorted(chosen):
            path = chosen[name]
            self.files.append(path)
            try:
                lines = self.read(path)
            except PolicySyntaxError as err:
                self.error(err)
                continue
            try:
                self.enter(_resolve(path, path, 0), path, 0)
            except PolicySyntaxError as err:
                self.error(err)
                continue
            try:
                self.load_lines(lines, path, path.parent)
            finally:
                self._stack.pop()

    def list_dir(self, dirpath: Path) -> dict[str, Path]:
        """``*.policy`` files of a folder by name, as qrexec filters them."""
        try:
            names = os.listdir(dirpath)
            resolved_dir = dirpath.resolve()
        except (OSError, ValueError) as err:
            reason = f"cannot list policy folder: {err}"
            self.error(PolicySyntaxError(dirpath, 0, reason))
            return {}
        found: dict[str, Path] = {}
        for name in names:
            if resolved_dir / name in self.overrides:
                continue
            if not name.endswith(POLICY_SUFFIX) or name.startswith("."):
                continue
            if _is_regular_file(dirpath / name):
                found[name] = dirpath / name
        for key, content in self.overrides.items():
            name = key.name
            if (
                key.parent == resolved_dir
                and content is not None
                and name.endswith(POLICY_SUFFIX)
                and not name.startswith(".")
            ):
                found[name] = dirpath / name
        for name in sorted(found):
            if not set(name) <= FILENAME_CHARSET:
                reason = (
                    "invalid file name (only 0-9 a-z _ . - allowed);"
                    " qrexec denies every call"
                )
                self.error(PolicySyntaxError(found.pop(name), 0, reason))
        return found

    def read(self, path: Path) -> list[str]:
        """The lines of *path*, or of its override."""
        resolved = _resolve(path, path, 0)
        if resolved in self.overrides:
            content = self.overrides[resolved]
            if content is None:
                reason = f"including a file that will be removed: {resolved}"
                raise PolicySyntaxError(path, 0, reason)
            data = content.encode("utf-8", "surrogateescape")
        else:
            try:
                data = _read_bytes(path)
            except (OSError, ValueError) as err:
                reason = f"cannot read: {err}"
                raise PolicySyntaxError(path, 0, reason) from err
        self._bytes += len(data)
        lines = _decode(data, path)
        self._lines += len(lines)
        if self._lines > MAX_SET_LINES or self._bytes > MAX_SET_BYTES:
            reason = (
                f"policy set larger than {MAX_SET_LINES} lines"
                f" or {MAX_SET_BYTES} bytes"
            )
            self.error(PolicySyntaxError(path, 0, reason))
            raise _Stop
        return lines

    def enter(self, resolved: Path, filepath: Path, lineno: int) -> None:
        if resolved in self._stack:
            raise PolicySyntaxError(
                filepath, lineno, f"include loop: {resolved}"
            )
        if len(self._stack) >= MAX_INCLUDE_DEPTH:
            reason = f"includes nested deeper than {MAX_INCLUDE_DEPTH}"
            raise PolicySyntaxError(filepath, lineno, reason)
        self._stack.append(resolved)

    def open_include(
        self, included: str, base: Path, filepath: Path, lineno: int
    ) -> tuple[Path, list[str]]:
        """Resolve an included file against *base*, enter it, read it."""
        resolved = _resolve(base / PurePosixPath(included), filepath, lineno)
        if resolved not in self.overrides and not _is_regular_file(resolved):
            raise PolicySyntaxError(filepath, lineno, f"not a file: {resolved}")
        if self.overrides.get(resolved, "") is None:
            reason = f"including a file that will be removed: {resolved}"
            raise PolicySyntaxError(filepath, lineno, reason)
        try:
            lines = self.read(resolved)
        except PolicySyntaxError as err:
            raise PolicySyntaxError(filepath, lineno, err.reason) from err
        self.enter(resolved, filepath, lineno)
        return resolved, lines

    def load_lines(self, lines: list[str], filepath: Path, base: Path) -> None:
        """Load a file in the R4.1+ syntax."""
        for lineno, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line[0] == "#":
                continue
            try:
                if line[0] == "!":
                    self.directive(line, filepath, lineno, base)
                elif not self.check_only:
                    self.rules.append(parse_rule_line(line, filepath, lineno))
                elif line not in _known_good:
                    parse_rule_line(line, filepath, lineno)
                    if len(_known_good) >= MAX_KNOWN_GOOD_LINES:
                        _known_good.clear()
                    _known_good.add(line)
            except PolicySyntaxError as err:
                self.error(err)

    def directive(
        self, line: str, filepath: Path, lineno: int, base: Path
    ) -> None:
        directive, *params = line.split()
        counts = {
            "!include": 1,
            "!include-dir": 1,
            "!include-service": 3,
            "!compat-4.0": 0,
        }
        if directive not in counts:
            raise PolicySyntaxError(filepath, lineno, "invalid directive")
        if len(params) != counts[directive]:
            raise PolicySyntaxError(
                filepath, lineno, "invalid number of params"
            )
        if directive == "!include":
            path, lines = self.open_include(params[0], base, filepath, lineno)
            try:
                self.load_lines(lines, path, base)
            finally:
                self._stack.pop()
        elif directive == "!include-dir":
            self.include_dir(params[0], base, filepath, lineno)
        elif directive == "!include-service":
            service, argument, included = params
            self.include_service(
                service, argument, included, base, filepath, lineno
            )
        else:
            self.compat40(filepath, lineno)

    def include_dir(
        self, included: str, base: Path, filepath: Path, lineno: int
    ) -> None:
        resolved = _resolve(base / PurePosixPath(included), filepath, lineno)
        if not os.path.isdir(resolved):
            raise PolicySyntaxError(
                filepath, lineno, f"not a directory: {resolved}"
            )
        self.enter(resolved, filepath, lineno)
        try:
            listing = self.list_dir(resolved)
            for name in sorted(listing):
                path = listing[name]
                try:
                    lines = self.read(path)
                    self.enter(_resolve(path, path, 0), filepath, lineno)
                except PolicySyntaxError as err:
                    self.error(err)
                    continue
                try:
                    self.load_lines(lines, path, base)
                finally:
                    self._stack.pop()
        finally:
            self._stack.pop()

    def include_service(
        self,
        service: str,
        argument: str,
        included: str,
        base: Path,
        filepath: Path,
        lineno: int,
    ) -> None:
        validate_service_and_argument(service, argument, filepath, lineno)
        path, lines = self.open_include(included, base, filepath, lineno)
        try:
            self.load_service_lines(service, argument, lines, path, base)
        finally:
            self._stack.pop()

    def load_service_lines(
        self,
        service: str,
        argument: str,
        lines: list[str],
        filepath: Path,
        base: Path,
    ) -> None:
        """Load a file in the old per-service syntax."""
        for lineno, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line[0] == "#":
                continue
            # qrexec's compatibility substitutions, applied to the whole line.
            line = line.replace("$include:", "!include ")
            line = line.replace("$", "@").replace(",", " ")
            try:
                if line[0] != "!":
                    self.rules.append(
                        parse_service_rule_line(
                            service, argument, line, filepath, lineno
                        )
                    )
                    continue
                directive, *params = line.split()
                if directive != "!include":
                    raise PolicySyntaxError(
                        filepath, lineno, "invalid directive"
                    )
                if len(params) != 1:
                    raise PolicySyntaxError(
                        filepath, lineno, "invalid number of params"
                    )
                self.include_service(
                    service, argument, params[0], base, filepath, lineno
                )
            except PolicySyntaxError as err:
                self.error(err)

    def compat40(self, filepath: Path, lineno: int) -> None:
        """``!compat-4.0``: the legacy per-service files, in qrexec's order."""
        if self.legacy_dir is None:
            return
        try:
            names = os.listdir(self.legacy_dir)
        except (OSError, ValueError) as err:
            reason = f"cannot list legacy policy folder: {err}"
            raise PolicySyntaxError(filepath, lineno, reason) from err
        services: dict[str, dict[str, str]] = {}
        for name in names:
            if (
                name.startswith(".")
                or name.endswith(_COMPAT_IGNORED_SUFFIXES)
                or not set(name) <= RPCNAME_CHARSET
                or not _is_regular_file(self.legacy_dir / name)
            ):
                continue
            service, plus, arg = name.partition("+")
            if not service:
                continue
            services.setdefault(service, {})["+" + arg if plus else "*"] = name
        for service in sorted(services):
            by_arg = services[service]
            for argument in sorted(by_arg, key=lambda a: (a == "*", a)):
                self.compat_file(
                    service, argument, by_arg[argument], filepath, lineno
                )

    def compat_file(
        self,
        service: str,
        argument: str,
        name: str,
        filepath: Path,
        lineno: int,
    ) -> None:
        legacy_dir = self.legacy_dir
        if legacy_dir is None:
            return
        try:
            self.include_service(
                service, argument, name, legacy_dir, filepath, lineno
            )
        except PolicySyntaxError as err:
            self.error(err)
        if argument != "*":
            # qrexec adds the deny that was implicit after a file for one
            # argument, so the general policy below is not consulted.
            path = legacy_dir / name
            for target in ("@anyvm", "@adminvm"):
                self.rules.append(
                    Rule(service, argument, "@anyvm", target, "deny", (), path)
                )


def _load(
    runtime_dir: Path | None,
    persistent_dir: Path,
    legacy_dir: Path | None,
    overrides: Mapping[Path, str | None],
    *,
    check_only: bool = False,
) -> PolicySet:
    """Load the set; with *check_only*, collect only its errors (the rules
    of the R4.1+ files are then left out)."""
    dirs = [d for d in (runtime_dir, persistent_dir) if d is not None]
    try:
        loader = _Loader(overrides, legacy_dir, check_only=check_only)
        try:
            loader.load_dirs(dirs)
        except _Stop:
            pass
    except Exception:  # fail closed: a set that did not load denies
        log.exception("policy_load_crashed")
        reason = "internal error while loading the policy set"
        return PolicySet(
            errors=(str(PolicySyntaxError(persistent_dir, 0, reason)),)
        )
    if loader.errors:
        log.error(
            "policy_load_failed",
            error_count=len(loader.errors),
            first_error=loader.errors[0],
        )
    return PolicySet(
        rules=tuple(loader.rules),
        errors=tuple(loader.errors),
        files=tuple(loader.files),
    )


def load_policy_set(
    runtime_dir: Path | None,
    persistent_dir: Path,
    legacy_dir: Path | None = None,
) -> PolicySet:
    """Load the policy set as qrexec would; never raises for bad files.

    Args:
        runtime_dir: ``/run/qubes/policy.d``; its files win over files of
            the same name in *persistent_dir*. ``None`` for none.
        persistent_dir: ``/etc/qubes/policy.d``.
        legacy_dir: ``/etc/qubes-rpc/policy``, read by ``!compat-4.0``;
            ``None`` makes that directive include nothing.

    Returns:
        The set; its ``errors`` are ``path:line: reason`` strings, and if
        there are any, every evaluation denies (as qrexec does).
    """
    return _load(runtime_dir, persistent_dir, legacy_dir, {})


def check_policy_set(
    runtime_dir: Path | None,
    persistent_dir: Path,
    legacy_dir: Path | None = None,
    overrides: Mapping[Path, str | None] | None = None,
) -> tuple[str, ...]:
    """Return the errors the set would have with some files replaced.

    Args:
        runtime_dir: as for :func:`load_policy_set`.
        persistent_dir: as for :func:`load_policy_set`.
        legacy_dir: as for :func:`load_policy_set`.
        overrides: file path to its new content, or ``None`` for a file to
            be removed; a new ``*.policy`` file in either folder is added.

    Returns:
        ``path:line: reason`` errors; empty when the set would load.
    """
    policy = _load(
        runtime_dir,
        persistent_dir,
        legacy_dir,
        overrides or {},
        check_only=True,
    )
    return policy.errors
