"""The campaignctl command line: thin modules that parse, call the library, render.

Heavy libraries (SQLAlchemy, SQLModel, paho-mqtt, PyYAML) are imported inside the
commands so that ``campaignctl --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typer.core import TyperArgument, TyperGroup

from campaignctl import __version__
from campaignctl.cli.common import info
from campaignctl.errors import CampaignctlError


class _Argument(TyperArgument):
    """An argument shown as its placeholder alone: ``NAME`` / ``[NAME]`` in the usage line
    and the argument list, where Typer writes ``{NAME}`` and ``NAME <str>``."""

    def display_type_rich(self, ctx: typer.Context) -> str | None:  # type: ignore[override]
        return None if self.metavar else super().display_type_rich(ctx)

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 and not name.endswith("...") else "")


def _plain_arguments(command: object) -> None:
    """Every argument of ``command`` and its sub-commands rendered as ``_Argument``: Typer
    builds its own parameter objects, so they are adjusted once the tree is built."""
    for param in getattr(command, "params", ()):
        if type(param) is TyperArgument:
            param.__class__ = _Argument
    for sub in getattr(command, "commands", {}).values():
        _plain_arguments(sub)


class _Group(TyperGroup):
    """Turns domain errors into ``Error: <message>`` on stderr and their exit code."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        _plain_arguments(self)

    def invoke(self, ctx: typer.Context):  # type: ignore[override]  # typer passes its own Context
        try:
            return super().invoke(ctx)
        except CampaignctlError as exc:
            info(f"Error: {exc}")  # messages quote devices and platforms: escaped
            ctx.exit(exc.exit_code)
        except Exception as exc:
            # The database failing under a command (server gone, permission denied, disk
            # full): one line naming the database, never a traceback with SQL.
            message = _database_error(exc, ctx)
            if message is None:
                raise
            info(f"Error: {message}")
            ctx.exit(1)


def _database_error(exc: Exception, ctx: typer.Context) -> str | None:
    from campaignctl import db

    # Only stored data decoded by db.loads is the database's fault: a decoding error from
    # anywhere else (stdin, a file, a flag) is a bug to fix where that input comes in.
    unreadable = isinstance(exc, db.UnreadableData)
    if not unreadable and not _from_the_database(exc):
        return None
    obj = ctx.obj if isinstance(ctx.obj, dict) else {}
    engine = obj.get("engine")
    location = db.location_of(engine) if engine is not None else db.locate(obj.get("db") or db.default_path())
    if isinstance(exc, db.UnreadableData):
        return str(db.unreadable_data(exc, location))
    return str(db.friendly(exc, location))


def _from_the_database(exc: Exception) -> bool:
    """A database error, wrapped by SQLAlchemy or straight from its driver (bulk loads
    use the driver's own COPY)."""
    package = type(exc).__module__.split(".")[0]
    if package == "sqlalchemy":
        from sqlalchemy.exc import DBAPIError

        return isinstance(exc, DBAPIError)
    if package == "sqlite3":
        return True
    if package == "psycopg":
        import psycopg

        return isinstance(exc, psycopg.Error)
    return False


app = typer.Typer(
    cls=_Group,
    name="campaignctl",
    help="Roll configuration and firmware campaigns out to fleets of IoT devices.",
    no_args_is_help=True,
    # --install-completion / --show-completion: Typer's completion costs nothing until used.
    add_completion=True,
    # Plain help: Rich-rendered help costs ~100 ms of imports on every --help.
    rich_markup_mode=None,
    # Tracebacks with local variables would print tokens: keep Python's plain ones.
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"campaignctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    db: Optional[str] = typer.Option(
        None,
        "--db",
        envvar="CAMPAIGNCTL_DB",
        metavar="PATH|URL",
        show_envvar=False,
        help="SQLite file, or postgresql://USER@HOST/DATABASE (password from PGPASSWORD or ~/.pgpass) "
        "[default: $XDG_DATA_HOME/campaignctl/campaignctl.db].",
    ),
    as_: Optional[str] = typer.Option(
        None,
        "--as",
        metavar="NAME",
        help="Who you are, for approvals and the audit trail [default: $CAMPAIGNCTL_USER, else the login name].",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    ctx.obj = {"db": db}
    from campaignctl import audit

    # Set even when absent: an earlier command run in the same process (tests) must not
    # lend its --as to this one.
    audit.set_actor(as_)


def _register() -> None:
    from campaignctl.cli import (
        approvals,
        campaigns,
        database,
        demo,
        devices,
        firmwares,
        jobs,
        listen,
        rollout,
        safety,
        serve,
        simulate,
    )

    app.add_typer(devices.app, name="devices", help="Import, list and inspect devices; set and report values.")
    app.add_typer(firmwares.app, name="firmwares", help="The firmware registry.")
    app.add_typer(jobs.app, name="jobs", help="Launch jobs: list, inspect, resume after a crash.")
    app.add_typer(database.app, name="db", help="The database's schema: upgrade, status.")
    from campaignctl.cli import operators

    app.add_typer(operators.app, name="operators", help="Who may use the operator API and the web front-end.")
    from campaignctl.cli import events

    app.add_typer(events.app, name="events", help="The audit trail: who changed what, and when; prune old events.")
    for command in campaigns.COMMANDS:
        app.command(command.__name__.rstrip("_").replace("_", "-"))(command)
    app.command("approve")(approvals.approve)
    app.command("reject")(approvals.reject)
    app.command("plan")(safety.plan)
    app.command("rollback")(safety.rollback)
    for command in (rollout.pause, rollout.resume, rollout.cancel, rollout.retry, rollout.run, rollout.tick):
        app.command(command.__name__)(command)
    app.command("listen")(listen.listen)
    app.command("serve")(serve.serve)
    app.command("simulate")(simulate.simulate)
    app.command("demo")(demo.demo)


_register()


#: Root options that may also be given after the command.
ROOT_OPTIONS = ("--db", "--as")


def db_first(args: list[str]) -> list[str]:
    """``args`` with ``--db VALUE`` / ``--as=VALUE`` given after the command moved to the
    front, where the root options are parsed: ``campaignctl status NAME --db x.db`` works
    as ``campaignctl --db x.db status NAME``. What follows ``--`` is never touched."""
    end = args.index("--") if "--" in args else len(args)
    moved: list[str] = []
    rest: list[str] = []
    i = 0
    while i < end:
        arg = args[i]
        if arg in ROOT_OPTIONS and i + 1 < end:
            moved += args[i : i + 2]
            i += 2
            continue
        (moved if arg.startswith(tuple(f"{o}=" for o in ROOT_OPTIONS)) else rest).append(arg)
        i += 1
    return moved + rest + args[end:]


def main() -> None:
    app(args=db_first(sys.argv[1:]))
