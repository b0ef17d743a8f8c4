"""Did you mean …? A close name for a mistyped one: campaigns, devices, interfaces, device
types, firmware types, manifest fields."""

from __future__ import annotations

import difflib
import os
from typing import TYPE_CHECKING, Iterable

from campaignctl.errors import NotFoundError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

# Tables this small are read whole; in a larger one (devices: 100k and more) only the
# names next to the mistyped one in sort order are read, through the name's index: the
# usual slip (a letter or digit wrong, missing or extra near the end) sorts close by.
_READ_WHOLE = 1000
_NEIGHBOURS = 50
# Tables with a unique ``name`` column that a name may be looked up in.
_TABLES = {"campaign", "device", "interface", "device_type"}


# How alike two names must be (difflib's ratio) to be suggested.
CUTOFF = 0.6


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the candidate closest to ``name``, or ``""``."""
    best = closest(name, candidates) if isinstance(name, str) else None
    return f"; did you mean {best!r}?" if best is not None else ""


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``name`` (difflib's ratio, at least CUTOFF). Among equally
    alike ones (``s-0042`` is as like ``s-00420`` as ``s-00462``), the one sharing the
    longest start with ``name``, then the first in sort order: never a chance pick."""
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(name)
    best: tuple[float, int, str] | None = None
    for candidate in candidates:
        if candidate == name:
            continue
        matcher.set_seq1(candidate)
        if matcher.real_quick_ratio() < CUTOFF or matcher.quick_ratio() < CUTOFF:
            continue
        ratio = matcher.ratio()
        if ratio < CUTOFF:
            continue
        key = (ratio, len(os.path.commonprefix([candidate, name])), candidate)
        if best is None or key[:2] > best[:2] or (key[:2] == best[:2] and candidate < best[2]):
            best = key
    return None if best is None else best[2]


def near_names(conn: "Connection", table: str, name: str) -> list[str]:
    """Names in ``table`` that might be what ``name`` meant: all of them when the table
    is small, else the ones sorted right before and after it."""
    from campaignctl import db

    assert table in _TABLES, table  # interpolated below: never outside text
    names = db.run(conn, f"SELECT name FROM {table} LIMIT {_READ_WHOLE + 1}").scalars().all()
    if len(names) <= _READ_WHOLE:
        return list(names)
    below = (
        db.run(
            conn, f"SELECT name FROM {table} WHERE name < :name ORDER BY name DESC LIMIT {_NEIGHBOURS}", {"name": name}
        )
        .scalars()
        .all()
    )
    above = (
        db.run(conn, f"SELECT name FROM {table} WHERE name > :name ORDER BY name LIMIT {_NEIGHBOURS}", {"name": name})
        .scalars()
        .all()
    )
    return [*below, *above]


def suggestion(conn: "Connection", table: str, name: str) -> str:
    """``"; did you mean 'roll'?"`` for a name missing from ``table``, or ``""``."""
    return did_you_mean(name, near_names(conn, table, name))


def not_found(conn: "Connection", table: str, name: str) -> NotFoundError:
    """``no campaign named 'rol'; did you mean 'roll'?``: the error for a name missing
    from ``table``, with the closest existing name when one is close."""
    return NotFoundError(f"no {table.replace('_', ' ')} named {name!r}" + suggestion(conn, table, name))
