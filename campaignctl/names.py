"""Rules for the names of devices, campaigns, interfaces and types."""

from __future__ import annotations

import re

# Device names end up in MQTT topics and URL paths: no '/', '+', '#', spaces.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


def name_problem(name: object, what: str = "name") -> str | None:
    if not isinstance(name, str):
        return f"{what} must be a string"
    if not _NAME.fullmatch(name):
        return (
            f"{what} {name!r} is not valid: 1 to 128 characters, letters, digits and '.', '_', ':', '@', '-', "
            "starting with a letter or digit"
        )
    return None


def check_name(value: str, what: str = "name") -> str:
    """A pydantic-friendly validator: raises ValueError."""
    problem = name_problem(value, what)
    if problem:
        raise ValueError(problem)
    return value
