"""What every command module shares: the database, output formats, rendering, progress."""

from __future__ import annotations

import enum
import json
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import typer

from campaignctl.values import LONE_SURROGATE, shown

if TYPE_CHECKING:
    import threading

    from rich.text import Text
    from sqlalchemy.engine import Engine

    from campaignctl.jobs import Progress


class Output(str, enum.Enum):
    table = "table"
    json = "json"
    # One line per row, streamed: only where a command takes ExportOutputOption.
    csv = "csv"
    ndjson = "ndjson"


def _table_or_json(value: Output) -> Output:
    # Most commands print a document: csv and ndjson are for the listings that take them.
    if value not in (Output.table, Output.json):
        raise typer.BadParameter(f"{value.value} is not available here: table or json")
    return value


OutputOption = typer.Option(
    Output.table,
    "--output",
    "-o",
    metavar="FORMAT",
    callback=_table_or_json,
    help="table (for people) or json (for scripts, on stdout).",
)
ExportOutputOption = typer.Option(
    Output.table,
    "--output",
    "-o",
    metavar="FORMAT",
    help="table (for people), json (for scripts), or csv / ndjson (a line per row, streamed), on stdout.",
)
CampaignArgument = typer.Argument(..., metavar="NAME", help="The campaign's name.")
DeviceArgument = typer.Argument(..., metavar="NAME", help="The device's name.")


def engine(ctx: typer.Context) -> "Engine":
    """The database engine for this invocation, opened (and migrated) on first use."""
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    root.obj = obj
    if "engine" not in obj:
        from campaignctl import db

        obj["engine"] = db.create_engine(obj.get("db") or db.default_path())
    return obj["engine"]


def duration(text: str, option: str, *, minimum: float = 0.0) -> float:
    """A duration option's seconds (``90s``, ``30m``, ``2h`` or bare seconds); a usage
    error naming ``option`` otherwise, or when shorter than ``minimum``."""
    from campaignctl.rollout import format_duration, parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None
    if seconds < minimum:
        raise typer.BadParameter(
            f"{text!r} is shorter than {format_duration(minimum)}, the least it can be", param_hint=option
        )
    return seconds


def stop_gracefully() -> "threading.Event":
    """The first Ctrl-C or SIGTERM sets the event that is returned: a worker ends after
    the unit of work in hand, rather than being interrupted at an arbitrary point of it
    (a transaction, a delivery's flush, a lease's release). A second one interrupts."""
    import signal
    import threading

    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def stop_on_sigterm() -> None:
    """A service manager's stop (SIGTERM) ends a long-running command as Ctrl-C does."""
    import signal

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)


def print_json(data: Any) -> None:
    """JSON on stdout: indented for a person at a terminal, compact for pipes. orjson
    encodes a 100k-device status in a tenth of the time the json module takes; what it
    refuses (see ``_orjson_safe``) is encoded by the json module instead, value by value."""
    import orjson

    encoded = _encode(data, orjson.OPT_APPEND_NEWLINE | (orjson.OPT_INDENT_2 if sys.stdout.isatty() else 0))
    sys.stdout.flush()
    sys.stdout.buffer.write(encoded)
    sys.stdout.buffer.flush()


def print_json_stream(data: dict[str, Any], key: str, chunk: int = 2000) -> None:
    """``print_json`` of ``data`` whose last member ``key`` is an iterator: written as it
    is read, so that a million devices are never all in memory. At a terminal, where
    JSON is indented for a person, it is read whole first."""
    if sys.stdout.isatty():
        print_json({**data, key: list(data[key])})
        return
    import itertools

    head = _encode({k: v for k, v in data.items() if k != key}, 0)
    out = sys.stdout.buffer
    sys.stdout.flush()
    out.write((head[:-1] + b',"' if len(head) > 2 else b'{"') + _encode(key, 0)[1:-1] + b'":[')
    items, first = iter(data[key]), True
    while batch := list(itertools.islice(items, chunk)):
        out.write((b"" if first else b",") + _encode(batch, 0)[1:-1])
        first = False
    out.write(b"]}\n")
    out.flush()


def print_export(data: dict[str, Any], output: Output) -> None:
    """``campaignctl.export``'s CSV or NDJSON of ``data`` on stdout, as it is read."""
    from campaignctl import export

    sys.stdout.flush()
    (export.write_ndjson if output is Output.ndjson else export.write_csv)(data, sys.stdout.buffer)
    sys.stdout.buffer.flush()


def _encode(data: Any, option: int) -> bytes:
    import orjson

    try:
        return orjson.dumps(data, option=option)
    except orjson.JSONEncodeError:
        return orjson.dumps(_orjson_safe(data, 0, orjson.Fragment), option=option)


# orjson refuses nesting deeper than 255; the json module takes over well before that.
_ORJSON_DEPTH = 200


def _orjson_safe(value: Any, depth: int, fragment: Any) -> Any:
    """``value`` with what orjson cannot encode replaced by the json module's encoding of it
    (a ``fragment``, orjson's pre-encoded JSON): strings holding lone surrogates (stored by
    older versions, or decoded from ``\\ud800`` escapes), integers beyond 64 bits, mappings
    with keys orjson refuses, nesting past its limit. The rest is kept as it is."""
    if isinstance(value, str):
        return fragment(_json_text(value)) if LONE_SURROGATE.search(value) else value
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else fragment(str(value))
    if isinstance(value, (dict, list, tuple)) and depth >= _ORJSON_DEPTH:
        return fragment(_json_text(value))
    if isinstance(value, dict):
        if not all(type(k) is str and not LONE_SURROGATE.search(k) for k in value):
            return fragment(_json_text(value))
        return {k: _orjson_safe(v, depth + 1, fragment) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_orjson_safe(v, depth + 1, fragment) for v in value]
    return value


def _json_text(value: Any) -> str:
    # ASCII only: a lone surrogate can be written as its \\u escape, and only so.
    return json.dumps(value, ensure_ascii=True, default=str)


def stdout_console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def info(message: str) -> None:
    """A message for people: stderr, so that stdout stays data. Messages carry outside
    text (device names, errors from devices and platforms): unsafe characters are shown
    escaped (``values.shown``)."""
    typer.echo(shown(message, None), err=True)


def echo(message: str) -> None:
    """A line on stdout, escaped as ``info`` is."""
    typer.echo(shown(message, None))


# Table cells longer than this are cut (with an ellipsis): one device's value must not
# fill the screen. -o json always gives everything.
CELL_LIMIT = 200


def plain(value: Any, *, limit: int | None = CELL_LIMIT, style: str = "") -> "Text":
    """Any value as Rich text shown exactly as written: no markup (``[bold]``, ``[link=…]``,
    a lone ``[``), no emoji codes (``:smile:``), unsafe characters escaped and cut to
    ``limit`` characters as ``values.shown`` does."""
    from rich.text import Text

    return Text(shown(fmt_value(value), limit), style=style)


def table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None, one_line: bool = False
) -> Any:
    """A Rich table whose cells (and title) are shown as ``plain`` text; a cell that is
    already a ``Text`` (made with ``plain``, e.g. to give it a style) is kept. Long cells
    wrap, or with ``one_line`` are cut with an ellipsis (one line per row)."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=None if title is None else plain(title, limit=None), title_justify="left", header_style="bold")
    for column in columns:
        t.add_column(column, overflow="fold")
    for row in rows:
        cells = [v if isinstance(v, Text) else plain(v) for v in row]
        if one_line:
            # Columns stay wrappable, so that Rich narrows the widest ones first (names and
            # statuses keep their width); the cells themselves are cut, not wrapped.
            for cell in cells:
                cell.no_wrap, cell.overflow = True, "ellipsis"
        t.add_row(*cells)
    return t


def show_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None) -> None:
    stdout_console().print(table(columns, rows, title=title))


def fmt_value(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def short_time(stamp: str | None) -> str:
    """2026-11-25T20:29:16.553410Z → 2026-11-25 20:29:16 (UTC), for tables."""
    return "" if not stamp else stamp[:19].replace("T", " ")


def tags_text(tags: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(tags.items()))


def parse_tags(items: Sequence[str] | None) -> dict[str, str]:
    from campaignctl.errors import InputError

    tags: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"expected KEY=VALUE, got {item!r}", field="--tag")
        tags[key] = value
    return tags


# When stderr is no terminal (CI, a service's log), a progress line at most this often.
PROGRESS_LINE_SECONDS = 5.0


@contextmanager
def progress_bar(enabled: bool | None = None) -> Iterator["Progress"]:
    """A ``progress(phase, done, total)`` callback: a Rich bar on stderr when it is a
    terminal, else a plain line (``deliver 12000/100000``) every few seconds and when a
    phase ends, so that a log shows a long launch moving."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield progress_lines(PROGRESS_LINE_SECONDS)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    labels = {"write": "writing configurations", "deliver": "delivering"}
    with Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=False,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(labels.get(phase, phase), total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update


def progress_lines(every: float) -> "Progress":
    """A ``progress(phase, done, total)`` callback writing ``phase done/total`` on stderr
    every ``every`` seconds of a phase, and once when the phase is done."""
    import time

    last: dict[str, float] = {}
    finished: set[str] = set()

    def update(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        complete = done >= total
        since = last.setdefault(phase, now)  # a phase's first line comes ``every`` after its start
        if phase in finished or (not complete and now - since < every):
            return
        if complete:
            finished.add(phase)
        last[phase] = now
        info(f"{phase} {done}/{total}")

    return update
