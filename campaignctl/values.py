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
# Control characters have no place in a key, and PostgreSQL text cannot hold NUL.
_KEY_FORBIDDEN = re.compile(r"[\s#$.\x00-\x1f\x7f]")
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


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
        return (f"key {key!r} contains {bad.group()!r} (whitespace, control characters, '#', '$' and '.' are "
                "not allowed)")
    return None


def check_key(key: object, *, source: str | None = None, field: str | None = None) -> str:
    problem = key_problem(key)
    if problem:
        raise InputError(problem, source=source, field=field)
    return key  # type: ignore[return-value]


INT_RANGE = (-(2**63), 2**63 - 1)


def _normalise(value: Any) -> Any:
    # JSON compares 1 and 1.0 as the same number; store one spelling so that SQL text
    # equality is JSON equality.
    if isinstance(value, int) and not isinstance(value, bool) and not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise ValueError("integers must fit in 64 bits (devices and JSON tools lose larger ones)")
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

    Raises ValueError for what is not JSON (NaN, 65-bit integers, values nested too deep).
    """
    try:
        return json.dumps(_normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except RecursionError:
        raise ValueError("the value is nested too deeply") from None


def loads(text: str | bytes) -> Any:
    """json.loads, with nesting too deep for Python reported as a ValueError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


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
        check_key(key, source=source)
        result[key] = value
    if not result:
        raise InputError("give at least one KEY=VALUE", source=source)
    return result


class MissingVariable(KeyError):
    pass


def expand_env(text: str, environ: dict[str, str] | None = None) -> tuple[str, bool]:
    """Replace ``${VAR}`` by the environment's value; ``$$`` is a literal ``$``.

    Returns the new text and whether any variable was used (such values are secret).
    A variable that is not set raises MissingVariable: an empty token is never what
    the author meant.
    """
    env = os.environ if environ is None else environ
    used = False

    def repl(match: re.Match[str]) -> str:
        nonlocal used
        name = match.group(1)
        if name is None:
            return "$"
        if name not in env:
            raise MissingVariable(name)
        used = True
        return env[name]

    return _ENV_REF.sub(repl, text), used


def mask(value: Any, secret: bool, *, show_secrets: bool = False) -> Any:
    return SECRET_MASK if secret and not show_secrets else value
