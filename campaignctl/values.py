"""Configuration keys and JSON values: validation, canonical form, command-line parsing."""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Iterable

from campaignctl.errors import InputError

MAX_KEY_LENGTH = 255
SECRET_MASK = "***"
# Control characters (C0, DEL and C1: terminals act on them) have no place in a key,
# and PostgreSQL text cannot hold NUL.
_KEY_FORBIDDEN = re.compile(r"[\s#$.\x00-\x1f\x7f-\x9f]")
# A UTF-16 surrogate alone is what a JSON "\ud800" escape decodes to: a Python string can
# hold it, but it is not Unicode text, and neither UTF-8 nor a database can store it.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# ${VAR}, ${VAR:-default} (the default up to the closing brace), and $$ for a literal $.
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def key_problem(key: object) -> str | None:
    """Why ``key`` is not a valid configuration key, or None when it is."""
    if not isinstance(key, str):
        return f"key must be a string, not {type(key).__name__}"
    if not key:
        return "key must not be empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"key is longer than {MAX_KEY_LENGTH} characters"
    bad = _KEY_FORBIDDEN.search(key)  # \s also finds a trailing newline
    if bad:
        return (
            f"key {key!r} contains {bad.group()!r} (whitespace, control characters, '#', '$' and '.' are not allowed)"
        )
    if LONE_SURROGATE.search(key):
        return f"key {key!r} is not Unicode text (it holds a lone surrogate)"
    return None


def check_key(key: object, *, source: str | None = None, field: str | None = None) -> str:
    problem = key_problem(key)
    if problem:
        raise InputError(problem, source=source, field=field)
    return key  # type: ignore[return-value]


INT_RANGE = (-(2**63), 2**63 - 1)
_INT_LIMIT = "integers must fit in 64 bits (devices and JSON tools lose larger ones)"
# A device's state report, whether it comes over MQTT or HTTP: its size in bytes, and how
# deeply objects and arrays may nest in it (the report itself is level 1).
MAX_STATE_BYTES = 64 * 1024
MAX_STATE_DEPTH = 32


def _normalise(value: Any) -> Any:
    # JSON compares 1 and 1.0 as the same number; store one spelling so that SQL text
    # equality is JSON equality.
    if isinstance(value, int) and not isinstance(value, bool) and not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise ValueError(_INT_LIMIT)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError("NaN and infinity are not JSON")
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def canonical(value: Any) -> str:
    """The one JSON text of ``value``: sorted keys, no spaces, integral floats as ints.

    Raises ValueError for what is not JSON (NaN, 65-bit integers, values nested too deep)
    or not Unicode (lone surrogates).
    """
    try:
        text = json.dumps(_normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise ValueError("the value is nested too deeply") from None
    # json.dumps escapes C0 control characters (NUL included), so the text is safe to
    # store; a lone surrogate it leaves as it is, and no database can store that.
    problem = _surrogate_problem(text)
    if problem:
        raise ValueError(problem)
    return text


def _surrogate_problem(text: str) -> str | None:
    bad = None if text.isascii() else LONE_SURROGATE.search(text)
    if bad is None:
        return None
    return f"text holds a lone surrogate {bad.group()!r} (half of a UTF-16 pair), which is not Unicode"


def depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value``: 0 for a scalar, 1 for ``{}`` or ``[1]``."""
    deepest, stack = 0, [(value, 1)]
    while stack:  # no recursion: the value may come from anyone
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


class TooDeep(ValueError):
    pass


def loads(text: str | bytes) -> Any:
    """json.loads, with nesting too deep for Python reported as TooDeep (a ValueError),
    and integers too long for Python as the 64-bit limit they break anyway."""
    try:
        return json.loads(text)
    except RecursionError:
        raise TooDeep("nested too deeply") from None
    except ValueError as exc:
        if str(exc).startswith("Exceeds the limit"):  # sys.get_int_max_str_digits()
            raise ValueError(_INT_LIMIT) from None
        raise


# What must never reach a terminal or a log line raw: C0 and C1 control characters and
# DEL (escape sequences, carriage returns and newlines that forge lines), lone surrogates
# (no encoding can write them), line/paragraph separators and the bidirectional controls
# that make text display in another order than it reads.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
ELLIPSIS = "…"


def _escaped(char: str) -> str:
    """An unsafe character as its Python escape: ``\\n``, ``\\x1b``, ``\\u202e``."""
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def cut(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its first ``limit`` and "…"."""
    return text if len(text) <= limit else text[:limit] + ELLIPSIS


def shown(text: str, limit: int | None = 80) -> str:
    """``text`` safe for a terminal, a log line or an error message: every unsafe character
    (see ``_UNSAFE``) written as its Python escape, the rest unchanged; then, unless
    ``limit`` is None, cut to at most ``limit`` characters and "…", escapes kept whole.
    Only the first ``limit`` + 1 characters are read: a huge text costs no more than a
    short one."""
    if limit is None:
        return _UNSAFE.sub(lambda m: _escaped(m.group()), text)
    head = text[: limit + 1]  # each character is at least one once escaped
    if not _UNSAFE.search(head):
        return cut(text, limit)
    pieces: list[str] = []
    size = 0
    for char in head:
        piece = _escaped(char) if _UNSAFE.match(char) else char
        if size + len(piece) > limit:
            return "".join(pieces) + ELLIPSIS
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)


def check_text(value: str, what: str, *, source: str | None = None) -> str:
    """``value`` if it can be stored (no lone surrogate, which is what bytes that are not
    UTF-8 become in argv and the environment), else an InputError naming ``what``."""
    # The check canonical() makes of text, without encoding the value as JSON for it.
    problem = _surrogate_problem(value)
    if problem:
        raise InputError(f"{what} takes text: {problem}", source=source)
    return value


def decode_utf8(data: bytes, *, source: str, bom: bool = False) -> str:
    """``data`` as text, or an InputError saying where it is not UTF-8. ``bom``: drop a
    leading byte order mark (files saved by spreadsheets and Windows editors have one)."""
    try:
        return data.decode("utf-8-sig" if bom else "utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=source) from None


def parse_json_text(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def parse_assignments(items: Iterable[str], *, source: str = "<command line>") -> dict[str, Any]:
    """Parse ``KEY=VALUE`` (a string) and ``KEY:=JSON`` (a JSON value), httpie's convention."""
    result: dict[str, Any] = {}
    for item in items:
        eq = item.find("=")
        if eq < 0:
            raise InputError(f"expected KEY=VALUE or KEY:=JSON, got {item!r}", source=source)
        if eq > 0 and item[eq - 1] == ":":
            key, raw = item[: eq - 1], item[eq + 1 :]
            try:
                value: Any = loads(raw)
                canonical(value)
            except ValueError as exc:
                raise InputError(f"{key}:= takes a JSON value: {exc}", source=source) from None
        else:
            key, value = item[:eq], item[eq + 1 :]
            check_text(value, f"{key}=", source=source)
        check_key(key, source=source)
        result[key] = value
    if not result:
        raise InputError("give at least one KEY=VALUE", source=source)
    return result


class MissingVariable(KeyError):
    pass


def expand_env(text: str, environ: dict[str, str] | None = None) -> tuple[str, bool]:
    """Replace ``${VAR}`` by the environment's value, ``${VAR:-default}`` by it or, when
    VAR is not set, by ``default``; ``$$`` is a literal ``$``.

    Returns the new text and whether any variable was referred to (such values are
    secret, whether or not the default was taken: what a value is must not decide if it
    is shown). A variable that is not set and has no default raises MissingVariable: an
    empty token is never what the author meant.
    """
    env = os.environ if environ is None else environ
    used = False

    def repl(match: re.Match[str]) -> str:
        nonlocal used
        name = match.group(1)
        if name is None:
            return "$"
        used = True
        if name in env:
            return env[name]
        if match.group(2) is not None:
            return match.group(2)
        raise MissingVariable(name)

    return _ENV_REF.sub(repl, text), used


def mask(value: Any, secret: bool, *, show_secrets: bool = False) -> Any:
    return SECRET_MASK if secret and not show_secrets else value
