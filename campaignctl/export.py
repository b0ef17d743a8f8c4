"""Listings as CSV or NDJSON, streamed: ``status NAME -o csv|ndjson`` (the per-device
supervision) and ``events -o csv|ndjson`` (the audit trail). One set of writers for both:
rows are written in blocks, so that a million devices are never all in memory, or one at
a time, each flushed, when a listing is followed (its reader sees each row as it comes).

Supervision: one row per device: device, batch, status, reason, attempts, delivered_at,
joined_at, then the reported value of each of the campaign's keys. In CSV that value is
its canonical JSON text in a column ``reported.<key>`` (a string is quoted: ``"eco"``;
nothing reported is an empty cell); in NDJSON it is the JSON value itself, under
``reported``, and a key not reported is absent. A secret key's value is ``***``: secret
for the campaign, or its entry ever written as secret (``supervision.masked``).

Audit trail: one row per event: id, at, actor, action, campaign, device, details (its
canonical JSON text in CSV).

CSV is the standard ``csv`` module's (RFC 4180, CRLF line ends, UTF-8; a lone surrogate,
text that came as bytes that are not UTF-8, is written as its escape rather than failing
the export half-way). Spreadsheets run a cell that starts with ``=``, ``+``, ``-``, ``@``
(or a tab or carriage return before one) as a formula: every free-text cell (a reason,
which quotes what devices and platforms wrote; an actor given to ``--as``; names, details
as recorded) that would is written with a leading ``'``, which spreadsheets hide and
scripts can drop. Device names start with a letter or digit, times with a digit, and a
reported value is JSON (a string starts with ``"``): none of them can start a formula.
"""

from __future__ import annotations

import csv
import io
import itertools
from typing import IO, Any, Iterable, Iterator, Sequence

from campaignctl.values import SECRET_MASK, canonical

COLUMNS = ("device", "batch", "status", "reason", "attempts", "delivered_at", "joined_at")
EVENT_COLUMNS = ("id", "at", "actor", "action", "campaign", "device", "details")
#: Rows encoded and written at a time.
BLOCK = 2000
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_MASKED = canonical(SECRET_MASK)


def neutralised(text: str | None) -> str | None:
    """``text`` as a spreadsheet shows it without running it: a leading ``'`` when it
    would start a formula."""
    return "'" + text if text and text.startswith(_FORMULA) else text


def header(keys: list[tuple[str, bool]]) -> list[str]:
    return [*COLUMNS, *(f"reported.{key}" for key, _ in keys)]


def write_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]], out: IO[bytes], *, follow: bool = False) -> None:
    """A header line, then ``rows`` (None as an empty cell), as CSV on ``out``: a block
    of rows per write, or with ``follow`` each row flushed as it comes.

    Each block is written by the csv module into a string, then encoded at once: through
    a ``TextIOWrapper`` over ``out``, which encodes and hands on every 8 KiB, writing
    100k devices' rows took 2.5 times as long."""
    lines = itertools.chain([columns], rows)
    while block := list(itertools.islice(lines, 1 if follow else BLOCK)):
        text = io.StringIO(newline="")
        csv.writer(text, lineterminator="\r\n").writerows(block)
        out.write(text.getvalue().encode("utf-8", "backslashreplace"))
        if follow:
            out.flush()
    out.flush()


def write_lines(lines: Iterable[bytes], out: IO[bytes], *, follow: bool = False) -> None:
    """Encoded lines (NDJSON) on ``out``: a block per write, or each flushed as it comes."""
    if follow:
        for line in lines:
            out.write(line)
            out.flush()
        return
    lines = iter(lines)
    while block := list(itertools.islice(lines, BLOCK)):
        out.write(b"".join(block))
    out.flush()


# -- the supervision -----------------------------------------------------------------------


def csv_rows(devices: Iterable[dict[str, Any]], keys: list[tuple[str, bool]]) -> Iterator[list[Any]]:
    """A row per device, in the order of ``header``."""
    secret = [i for i, (_key, hidden) in enumerate(keys) if hidden]
    missing: list[str | None] = [None] * len(keys)  # a campaign not launched yet: nothing read
    for d in devices:
        # ``reported`` holds the keys in their order (supervision.device_statuses).
        reported = d.get("reported")
        values = missing if reported is None else list(reported.values())
        for i in secret:
            if values[i] is not None:
                values[i] = _MASKED
        reason = d["reason"]
        if reason and reason.startswith(_FORMULA):  # ``neutralised``, inline: once per device
            reason = "'" + reason
        yield [
            d["device"],
            d["batch"],
            d["status"],
            reason,
            d["attempts"],
            d.get("delivered_at"),
            d["joined_at"],
            *values,
        ]


def write_csv(data: dict[str, Any], out: IO[bytes]) -> None:
    """The devices of ``open_status(..., export=True)`` as CSV, with a header line."""
    write_rows(header(data["keys"]), csv_rows(data["devices"], data["keys"]), out)


def ndjson_lines(devices: Iterable[dict[str, Any]], keys: list[tuple[str, bool]]) -> Iterator[bytes]:
    """One JSON object per device: its members in ``status -o json``, its ``delivered_at``
    and its ``reported`` values. Those are stored as canonical JSON: the object is put
    together from them as they are (an orjson fragment), not decoded and encoded again."""
    import orjson

    # "key": before each value, and the value itself for a secret key.
    members = [(orjson.dumps(key).decode() + ":", _MASKED if hidden else None) for key, hidden in keys]
    for d in devices:
        values = d.get("reported") or {}
        d.setdefault("delivered_at", None)  # a campaign not launched yet: not read
        d["reported"] = orjson.Fragment(
            "{" + ",".join([m + (mask or v) for (m, mask), v in zip(members, values.values()) if v is not None]) + "}"
        )
        try:
            yield orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:  # a lone surrogate (older data): the json module escapes it
            yield _slow_line(d, values, {key for key, hidden in keys if hidden})


def _slow_line(device: dict[str, Any], values: dict[str, str | None], secret: set[str]) -> bytes:
    import json

    reported = {key: SECRET_MASK if key in secret else json.loads(v) for key, v in values.items() if v is not None}
    return json.dumps({**device, "reported": reported}, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def write_ndjson(data: dict[str, Any], out: IO[bytes]) -> None:
    """The devices of ``open_status(..., export=True)`` as NDJSON."""
    write_lines(ndjson_lines(data["devices"], data["keys"]), out)


# -- the audit trail -----------------------------------------------------------------------


def write_events_csv(events: Iterable[dict[str, Any]], out: IO[bytes], *, follow: bool = False) -> None:
    """Events (``audit.events``) as CSV, ``details`` as its JSON text; every cell but
    the id and the time is text someone typed or recorded."""
    rows = (
        [e["id"], e["at"], *(neutralised(v) for v in (e["actor"], e["action"], e["campaign"], e["device"]))]
        + [neutralised(canonical(e["details"]))]
        for e in events
    )
    write_rows(EVENT_COLUMNS, rows, out, follow=follow)


def write_events_ndjson(events: Iterable[dict[str, Any]], out: IO[bytes], *, follow: bool = False) -> None:
    """Events as NDJSON: one object per event, its members as in ``events -o json``."""
    write_lines(map(_json_line, events), out, follow=follow)


def _json_line(value: dict[str, Any]) -> bytes:
    import orjson

    try:
        return orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:  # a lone surrogate (older data): the json module escapes it
        import json

        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
