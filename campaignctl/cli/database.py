"""``campaignctl db upgrade | status``"""

from __future__ import annotations

import typer

from campaignctl.cli.common import Output, OutputOption, info, print_json

app = typer.Typer(no_args_is_help=True)


def _target(ctx: typer.Context) -> str:
    from campaignctl import db

    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    return obj.get("db") or db.default_path()


@app.command("upgrade")
def upgrade(ctx: typer.Context, output: Output = OutputOption) -> None:
    """Create the schema, or migrate it to this campaignctl's revision (run it once after an
    upgrade, before the workers; SQLite databases are upgraded when opened)."""
    from campaignctl import db, migrations

    engine = db.create_engine(_target(ctx), upgrade=True)
    data = migrations.status(engine)
    if output is Output.json:
        print_json(data)
    else:
        info(f"{data['database']}: at schema revision {data['current']} (the latest)")


@app.command("status")
def status(ctx: typer.Context, output: Output = OutputOption) -> None:
    """The database's schema revision and the latest this campaignctl knows (exit 1 when behind)."""
    from campaignctl import db, migrations
    from campaignctl.errors import CampaignctlError

    engine = db.create_engine(_target(ctx), upgrade=False, check=False)
    data = migrations.status(engine)
    if output is Output.json:
        print_json(data)
    else:
        typer.echo(
            f"database: {data['database']}\ncurrent revision: {data['current'] or 'none'}\n"
            f"latest revision: {data['latest']}"
        )
    if not data["up_to_date"]:
        raise CampaignctlError("the schema is behind: run `campaignctl db upgrade`")
