"""``campaignctl approve | reject``"""

from __future__ import annotations

from typing import Any, Optional

import typer

from campaignctl.cli.common import CampaignArgument, Output, OutputOption, echo, engine, print_json, short_time


def approve(
    ctx: typer.Context,
    name: str = CampaignArgument,
    comment: Optional[str] = typer.Option(None, "--comment", metavar="TEXT", help="Why, for the others to read."),
    output: Output = OutputOption,
) -> None:
    """Approve a campaign before it starts, as you (--as NAME, else $CAMPAIGNCTL_USER, else
    the login name): it starts once enough distinct people have approved it."""
    _give(ctx, name, "approve", comment, output)


def reject(
    ctx: typer.Context,
    name: str = CampaignArgument,
    comment: str = typer.Option(..., "--comment", metavar="TEXT", help="Why (required)."),
    output: Output = OutputOption,
) -> None:
    """Reject a campaign before it starts: it cannot start until it is changed with apply
    (which voids every verdict)."""
    _give(ctx, name, "reject", comment, output)


def _give(ctx: typer.Context, name: str, verdict: str, comment: Optional[str], output: Output) -> None:
    from campaignctl import approvals

    found = approvals.give(engine(ctx), name, verdict, comment)
    if output is Output.json:
        print_json({"campaign": name, **found})
        return
    done = "approved" if verdict == "approve" else "rejected"
    echo(f"campaign {name}: {done} by {found['actor']}; {summary(found)}")


def summary(found: dict[str, Any]) -> str:
    """``1 of 2 approvals, needs 1 more approval`` / ``rejected by bob``: a campaign's
    approvals in a line."""
    from campaignctl import approvals

    text = f"{found['approved']} of {found['required']} approval(s)"
    if found["rejected"]:
        return text + f", rejected by {', '.join(found['rejected'])}"
    return text + (f", needs {approvals.missing_text(found['missing'])}" if found["missing"] else ", approved")


def verdict_rows(found: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The rows of a table of verdicts: who, verdict, comment, when."""
    return [(v["actor"], v["verdict"], v["comment"], short_time(v["at"])) for v in found["verdicts"]]


VERDICT_COLUMNS = ["who", "verdict", "comment", "when (UTC)"]


def approval_parts(found: dict[str, Any]) -> list[Any]:
    """What ``show`` and ``status`` print of a campaign's approvals: a line, and the
    verdicts' table when there are any (every text a person typed shown as plain text)."""
    from campaignctl.cli.common import plain, table

    parts: list[Any] = [plain(f"approvals: {summary(found)}", limit=None)]
    if found["verdicts"]:
        parts.append(table(VERDICT_COLUMNS, verdict_rows(found)))
    return parts
