"""``campaignctl events``: the audit trail, listed, followed, exported, pruned."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Iterable, Optional

import typer

from campaignctl.cli.common import (
    ExportOutputOption,
    Output,
    OutputOption,
    echo,
    engine,
    fmt_value,
    info,
    print_json_stream,
    short_time,
    stop_on_sigterm,
)
from campaignctl.export import EVENT_COLUMNS

if TYPE_CHECKING:
    from campaignctl.audit import Filters

app = typer.Typer(no_args_is_help=False)

COLUMNS = EVENT_COLUMNS
#: Events a table shows without --limit: the newest ones (the trail of a year is long).
TABLE_LIMIT = 100


def _when(text: str, option: str) -> str:
    """A ``--since`` / ``--before`` value as UTC text; a usage error naming the option."""
    from campaignctl.audit import parse_when

    try:
        return parse_when(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


@app.callback(invoke_without_command=True)
def events(
    ctx: typer.Context,
    campaign: Optional[str] = typer.Option(None, "--campaign", metavar="NAME", help="Only this campaign's events."),
    device: Optional[str] = typer.Option(None, "--device", metavar="NAME", help="Only this device's events."),
    action: Optional[str] = typer.Option(
        None, "--action", metavar="ACTION", help="Only this action (campaign.launched), or family (batch)."
    ),
    since: Optional[str] = typer.Option(
        None, "--since", metavar="DURATION|TIME", help="Only events from this long ago (2h, 7d) or this ISO time on."
    ),
    limit: Optional[int] = typer.Option(
        None,
        "--limit",
        min=0,
        metavar="N",
        help=f"Only the newest N events, still oldest first (0: all). The table: {TABLE_LIMIT} unless given.",
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Then print new events as they come (Ctrl-C stops)."),
    interval: str = typer.Option(
        "1s", "--interval", metavar="DURATION", help="With --follow: how often to look for new events."
    ),
    output: Output = ExportOutputOption,
) -> None:
    """The audit trail: who changed what, and when, oldest first."""
    if ctx.invoked_subcommand is not None:
        return
    from campaignctl import audit
    from campaignctl.cli.common import duration

    if follow and output is Output.json:
        raise typer.BadParameter("one JSON document cannot grow: use -o ndjson (or csv, table)", param_hint="--follow")
    filters = audit.Filters(campaign, device, action, None if since is None else _when(since, "--since"))
    every = duration(interval, "--interval", minimum=0.1)
    if output is Output.table and not follow and limit is None:
        limit = TABLE_LIMIT  # json, ndjson and csv stream the whole trail: they hold a page at a time
    if follow:
        stop_on_sigterm()
    db = engine(ctx)
    rows = audit.events(db, filters, limit=limit or None, follow=follow, interval=every)
    try:
        _render(rows, output, follow, filters)
        if output is Output.table and not follow and limit:
            _more(audit.count(db, filters) - limit)
    except KeyboardInterrupt:
        return  # Ctrl-C (or SIGTERM) ends a --follow: not an error
    except BrokenPipeError:  # the reader is gone (| head): nothing more to say, to anyone
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _render(rows: Iterable[dict[str, Any]], output: Output, follow: bool, filters: "Filters") -> None:
    from campaignctl import export

    if output is Output.json:
        print_json_stream({"events": rows}, "events")
    elif output in (Output.csv, Output.ndjson):
        sys.stdout.flush()
        write = export.write_events_csv if output is Output.csv else export.write_events_ndjson
        write(rows, sys.stdout.buffer, follow=follow)
    elif follow:
        _lines(rows)
    else:
        _table(list(rows), filters)


def _more(more: int) -> None:
    """Under a table cut at its limit: how many older events it leaves out, and how to see them."""
    if more > 0:
        info(f"… {more} older event(s); --limit N shows more (0: all), -o ndjson or csv gives everything")


def details_text(details: dict[str, Any], prefix: str = "") -> str:
    """``key=value`` pairs, nested objects as ``key.sub=value``, values that are not
    strings as JSON: for people."""
    return " ".join(
        details_text(v, f"{prefix}{k}.") if isinstance(v, dict) and v else f"{prefix}{k}={fmt_value(v)}"
        for k, v in details.items()
    )


def _cells(row: dict[str, Any]) -> list[Any]:
    return [
        row["id"],
        short_time(row["at"]),
        row["actor"],
        row["action"],
        row["campaign"],
        row["device"],
        details_text(row["details"]),
    ]


def _table(rows: list[dict[str, Any]], filters: "Filters") -> None:
    from campaignctl.cli.common import show_table

    if not rows:
        info("no event" + (" matches" if filters.where()[0] else " recorded yet"))
        return
    show_table(COLUMNS, [_cells(r) for r in rows])


def _lines(rows: Iterable[dict[str, Any]]) -> None:
    """A followed table: one line per event as it comes (a table's columns cannot be
    known before its last row), every outside text escaped."""
    for row in rows:
        echo("  ".join("-" if c in (None, "") else str(c) for c in _cells(row)))
        sys.stdout.flush()


@app.command("prune")
def prune(
    ctx: typer.Context,
    before: str = typer.Option(
        ..., "--before", metavar="DURATION|TIME", help="Delete the events older than this (30d) or this ISO time."
    ),
    output: Output = OutputOption,
) -> None:
    """Delete old events (the one way events leave the trail); recorded as an event itself."""
    from campaignctl import audit
    from campaignctl.cli.common import print_json

    result = audit.prune(engine(ctx), _when(before, "--before"))
    if output is Output.json:
        print_json(result)
    else:
        info(f"pruned {result['pruned']} event(s) recorded before {result['before']}")
