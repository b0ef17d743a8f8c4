"""``campaignctl operators ...``"""

from __future__ import annotations

import typer

from campaignctl.cli.common import Output, OutputOption, engine, info, print_json, short_time, show_table

app = typer.Typer(no_args_is_help=True)

OperatorArgument = typer.Argument(..., metavar="NAME", help="The operator's name.")


@app.command("add")
def add(ctx: typer.Context, name: str = OperatorArgument) -> None:
    """Add an operator; their token is printed once, alone on stdout."""
    from campaignctl import operators

    token = operators.add(engine(ctx), name)
    typer.echo(token)
    info(f"operator {name} added; keep this token now: it is not shown again (revoke and add to replace it)")


@app.command("list")
def list_(ctx: typer.Context, output: Output = OutputOption) -> None:
    """List operators (never their tokens)."""
    from campaignctl import operators

    rows = operators.list_operators(engine(ctx))
    if output is Output.json:
        print_json(rows)
        return
    show_table(
        ["name", "status", "created", "last used", "revoked"],
        [
            (
                r["name"],
                r["status"],
                short_time(r["created_at"]),
                short_time(r["last_used_at"]),
                short_time(r["revoked_at"]),
            )
            for r in rows
        ],
    )


@app.command("revoke")
def revoke(ctx: typer.Context, name: str = OperatorArgument) -> None:
    """Revoke an operator's token: the API refuses it from the next request on."""
    from campaignctl import operators

    operators.revoke(engine(ctx), name)
    info(f"operator {name}: revoked")
