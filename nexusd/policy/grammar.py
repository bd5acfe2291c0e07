# SPDX-License-Identifier: MIT
"""The grammar of one qrexec policy rule: tokens, parameters, parse, render.

Mirrors qrexec's R4.1+ rule syntax (``qrexec/policy/parser.py``): five
columns split on whitespace, then ``key=value`` parameters. Every check runs
in the :class:`Rule` constructor, so a ``Rule`` that exists is valid and
renders to a line that parses back to an equal ``Rule``.
"""

from __future__ import annotations

import enum
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ACTIONS",
    "RPCNAME_CHARSET",
    "PolicySyntaxError",
    "Rule",
    "TokenKind",
    "classify_token",
    "parse_rule_line",
    "parse_service_rule_line",
    "render_rule",
    "validate_service_and_argument",
]

#: qrexec's ``RPCNAME_ALLOWED_CHARSET``: service names (without ``+``) and
#: arguments (with ``+``) use only these.
RPCNAME_CHARSET = frozenset(string.ascii_letters + string.digits + "+-._")
_SERVICE_CHARSET = RPCNAME_CHARSET - {"+"}

#: The three actions and the parameters each accepts, in render order.
ACTIONS: dict[str, tuple[str, ...]] = {
    "allow": ("target", "user", "notify", "autostart"),
    "deny": ("notify",),
    "ask": ("target", "default_target", "user", "notify", "autostart"),
}
_PARAM_ORDER = {
    key: index
    for index, key in enumerate(
        ("target", "default_target", "user", "notify", "autostart")
    )
}
_BOOL_PARAMS = frozenset({"notify", "autostart"})
_REDIRECT_PARAMS = frozenset({"target", "default_target"})

#: Rule columns before the parameters.
_RULE_FIELDS = 5
#: Old-syntax columns (``SOURCE TARGET ACTION``) before the parameters.
_SERVICE_RULE_FIELDS = 3

# str.split() and re's \s agree on what whitespace is (Py_UNICODE_ISSPACE).
_WHITESPACE = re.compile(r"\s")


class PolicySyntaxError(ValueError):
    """A policy file breaks the grammar; the whole set then denies.

    Attributes:
        filepath: the file in which the error is, if known.
        lineno: its line (1-based), 0 for the file as a whole.
        reason: what is wrong, without the location.
    """

    def __init__(
        self, filepath: Path | str | None, lineno: int | None, reason: str
    ) -> None:
        """Build ``path:line: reason``."""
        self.filepath = Path(filepath) if filepath is not None else None
        self.lineno = lineno
        self.reason = reason
        where = str(filepath) if filepath is not None else "<unknown>"
        super().__init__(f"{where}:{lineno or 0}: {reason}")


class TokenKind(enum.Enum):
    """What a qube token in a policy column denotes."""

    NAME = "name"  # a qube name or uuid:UUID, taken literally
    WILDCARD = "*"
    ADMINVM = "@adminvm"
    ANYVM = "@anyvm"
    DEFAULT = "@default"
    DISPVM = "@dispvm"
    TYPE = "@type:"
    TAG = "@tag:"
    DISPVM_TEMPLATE = "@dispvm:"
    DISPVM_TAG = "@dispvm:@tag:"


_K = TokenKind
_EXACT = {
    "*": _K.WILDCARD,
    "@adminvm": _K.ADMINVM,
    "@anyvm": _K.ANYVM,
    "@default": _K.DEFAULT,
    "@dispvm": _K.DISPVM,
}
# qrexec's order: a suffix starting with '@' falls through to a longer prefix.
_PREFIXES = (
    ("@type:", _K.TYPE),
    ("@tag:", _K.TAG),
    ("@dispvm:", _K.DISPVM_TEMPLATE),
    ("@dispvm:@tag:", _K.DISPVM_TAG),
)
#: Which kinds each column accepts (QUBES-PROTOCOLS.md table 4.2).
_ALLOWED: dict[str, frozenset[TokenKind]] = {
    "source": frozenset(
        {
            _K.NAME,
            _K.WILDCARD,
            _K.ADMINVM,
            _K.ANYVM,
            _K.TYPE,
            _K.TAG,
            _K.DISPVM_TEMPLATE,
            _K.DISPVM_TAG,
        }
    ),
    "target": frozenset(TokenKind),
    "redirect": frozenset({_K.NAME, _K.ADMINVM, _K.DISPVM, _K.DISPVM_TEMPLATE}),
    "intended target": frozenset(
        {_K.NAME, _K.ADMINVM, _K.DEFAULT, _K.DISPVM, _K.DISPVM_TEMPLATE}
    ),
}


def classify_token(word: str, column: str) -> tuple[TokenKind, str]:
    """Return the kind of token *word* and its suffix, if *column* allows it.

    Args:
        word: one whitespace-free field of a rule, a parameter value or a
            caller's intended target.
        column: ``"source"``, ``"target"``, ``"redirect"`` (``target=``,
            ``default_target=``) or ``"intended target"``.

    Returns:
        The kind and the part after the prefix (``"web"`` for ``@tag:web``,
        the whole token for a name, ``""`` for keywords).

    Raises:
        ValueError: the word is empty, an unknown ``@`` word, has an empty
            suffix, or is not allowed in that column; the message is the
            reason without a location.
    """
    if not word:
        msg = f"invalid empty {column} token"
        raise ValueError(msg)
    if not (word.startswith("@") or word == "*"):
        return _K.NAME, word
    allowed = _ALLOWED[column]
    kind = _EXACT.get(word)
    if kind is not None and kind in allowed:
        return kind, ""
    for prefix, kind in _PREFIXES:
        if kind not in allowed or not word.startswith(prefix):
            continue
        value = word[len(prefix) :]
        if not value:
            msg = f"invalid empty {prefix} token: {word!r}"
            raise ValueError(msg)
        if value.startswith("@"):
            continue
        return kind, value
    msg = f"invalid {column} token: {word!r}"
    raise ValueError(msg)


def _invalid_chars(text: str, allowed: frozenset[str]) -> str:
    return "".join(sorted(set(text) - allowed))


def validate_service_and_argument(
    service: str, argument: str, filepath: Path | str | None, lineno: int | None
) -> None:
    """Check a service column and an argument column as qrexec does.

    Raises:
        PolicySyntaxError: bad characters, an argument without ``+``, or a
            ``*`` service with an argument other than ``*``.
    """
    if service != "*":
        bad = _invalid_chars(service, _SERVICE_CHARSET)
        if bad:
            reason = f"service {service!r} contains invalid characters: {bad!r}"
            raise PolicySyntaxError(filepath, lineno, reason)
        if not service:
            raise PolicySyntaxError(filepath, lineno, "empty service name")
    if argument == "*":
        return
    bad = _invalid_chars(argument, RPCNAME_CHARSET)
    if bad:
        reason = f"argument {argument!r} contains invalid characters: {bad!r}"
        raise PolicySyntaxError(filepath, lineno, reason)
    if not argument.startswith("+"):
        reason = f"argument {argument!r} does not start with +"
        raise PolicySyntaxError(filepath, lineno, reason)
    if service == "*":
        reason = "only * argument allowed for * service"
        raise PolicySyntaxError(filepath, lineno, reason)


@dataclass(frozen=True)
class Rule:
    """One policy rule, checked when built.

    ``params`` holds ``(key, value)`` pairs as written (``notify=yes`` is
    ``("notify", "yes")``); they are kept in one fixed key order so equal
    rules compare equal. ``filepath`` and ``lineno`` say where the rule was
    read and take no part in ``==``.

    Raises:
        PolicySyntaxError: any field breaks the grammar.
    """

    service: str
    argument: str
    source: str
    target: str
    action: str
    params: tuple[tuple[str, str], ...] = ()
    filepath: Path | None = field(default=None, compare=False)
    lineno: int | None = field(default=None, compare=False)
    source_kind: TokenKind = field(init=False, repr=False, compare=False)
    source_value: str = field(init=False, repr=False, compare=False)
    target_kind: TokenKind = field(init=False, repr=False, compare=False)
    target_value: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Validate every field and put ``params`` in canonical order."""
        path, lineno = self.filepath, self.lineno
        if path is not None and not isinstance(path, Path):
            object.__setattr__(self, "filepath", path := Path(path))
        for text in (self.service, self.argument, self.source, self.target):
            _check_no_whitespace(text, path, lineno)
        validate_service_and_argument(self.service, self.argument, path, lineno)
        try:
            source = classify_token(self.source, "source")
            target = classify_token(self.target, "target")
        except ValueError as err:
            raise PolicySyntaxError(path, lineno, str(err)) from err
        object.__setattr__(self, "source_kind", source[0])
        object.__setattr__(self, "source_value", source[1])
        object.__setattr__(self, "target_kind", target[0])
        object.__setattr__(self, "target_value", target[1])
        accepted = ACTIONS.get(self.action)
        if accepted is None:
            reason = f"invalid action: {self.action!r}"
            raise PolicySyntaxError(path, lineno, reason)
        params = _check_params(self.action, accepted, self.params, path, lineno)
        object.__setattr__(self, "params", params)
        if (
            self.target_kind is _K.DEFAULT
            and self.action == "allow"
            and self.param("target") is None
        ):
            reason = "allow action for @default rule must specify target="
            raise PolicySyntaxError(path, lineno, reason)

    def param(self, key: str) -> str | None:
        """Return the value of parameter *key*, or ``None`` if not given."""
        for name, value in self.params:
            if name == key:
                return value
        return None

    @property
    def notify(self) -> bool:
        """``notify=``, defaulting to yes for deny and no otherwise."""
        value = self.param("notify")
        if value is None:
            return self.action == "deny"
        return value == "yes"

    @property
    def autostart(self) -> bool:
        """``autostart=``, defaulting to yes."""
        return self.param("autostart") != "no"

    @property
    def user(self) -> str | None:
        """``user=``; ``None`` (qrexec's DEFAULT) when absent or empty."""
        return self.param("user") or None


def _check_no_whitespace(
    text: str, path: Path | None, lineno: int | None
) -> None:
    if _WHITESPACE.search(text):
        reason = f"field {text!r} contains whitespace"
        raise PolicySyntaxError(path, lineno, reason)


def _check_params(
    action: str,
    accepted: tuple[str, ...],
    params: Iterable[tuple[str, str]],
    path: Path | None,
    lineno: int | None,
) -> tuple[tuple[str, str], ...]:
    seen: dict[str, str] = {}
    for key, value in params:
        if key in seen:
            reason = f"parameter given twice: {key!r}"
            raise PolicySyntaxError(path, lineno, reason)
        _check_no_whitespace(key, path, lineno)
        _check_no_whitespace(value, path, lineno)
        seen[key] = value
    for key in _BOOL_PARAMS & seen.keys():
        if seen[key] not in ("yes", "no"):
            reason = f"{key!r} is {seen[key]!r}, but can be only 'yes' or 'no'"
            raise PolicySyntaxError(path, lineno, reason)
    unknown = sorted(seen.keys() - set(accepted))
    if unknown:
        reason = f"invalid parameters for action {action}: {unknown!r}"
        raise PolicySyntaxError(path, lineno, reason)
    for key in _REDIRECT_PARAMS & seen.keys():
        try:
            classify_token(seen[key], "redirect")
        except ValueError as err:
            raise PolicySyntaxError(path, lineno, f"{key}=: {err}") from err
    return tuple(sorted(seen.items(), key=lambda item: _PARAM_ORDER[item[0]]))


def _split_params(
    words: Iterable[str], path: Path | str, lineno: int
) -> list[tuple[str, str]]:
    pairs = []
    for param in words:
        key, sep, value = param.partition("=")
        if not sep:
            reason = f"invalid action parameter syntax: {param!r}"
            raise PolicySyntaxError(path, lineno, reason)
        pairs.append((key, value))
    return pairs


def parse_rule_line(line: str, filepath: Path | str, lineno: int) -> Rule:
    """Parse one rule in the R4.1+ syntax.

    Args:
        line: ``SERVICE ARGUMENT SOURCE TARGET ACTION [key=value ...]``;
            not a comment, blank line or directive (those are the loader's).
        filepath: the file it came from, for errors and decisions.
        lineno: its line number in that file.

    Raises:
        PolicySyntaxError: the line breaks the grammar.
    """
    fields = line.split()
    if len(fields) < _RULE_FIELDS:
        raise PolicySyntaxError(filepath, lineno, "wrong number of fields")
    service, argument, source, target, action, *params = fields
    return Rule(
        service,
        argument,
        source,
        target,
        action,
        tuple(_split_params(params, filepath, lineno)),
        Path(filepath),
        lineno,
    )


def parse_service_rule_line(
    service: str, argument: str, line: str, filepath: Path | str, lineno: int
) -> Rule:
    """Parse one rule of the old per-service syntax for *service*.

    The line is ``SOURCE TARGET ACTION[,key=value...]`` after qrexec's
    substitutions (``$`` to ``@``, commas to blanks) have been applied.

    Raises:
        PolicySyntaxError: the line breaks the grammar.
    """
    fields = line.split()
    if len(fields) < _SERVICE_RULE_FIELDS:
        raise PolicySyntaxError(filepath, lineno, "wrong number of fields")
    source, target, action, *params = fields
    return Rule(
        service,
        argument,
        source,
        target,
        action,
        tuple(_split_params(params, filepath, lineno)),
        Path(filepath),
        lineno,
    )


def render_rule(rule: Rule) -> str:
    """Return *rule* as one line (no newline) that parses back equal."""
    fields = [rule.service, rule.argument, rule.source, rule.target]
    fields.append(rule.action)
    fields.extend(f"{key}={value}" for key, value in rule.params)
    return " ".join(fields)
