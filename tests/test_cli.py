"""The command line itself: help, version, errors on stderr, start-up cost."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from campaignctl import __version__
from campaignctl.cli import app


def test_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (
        "create",
        "apply",
        "list",
        "show",
        "delete",
        "launch",
        "status",
        "listen",
        "devices",
        "firmwares",
        "jobs",
    ):
        assert f"  {command} " in result.stdout


def test_version():
    assert CliRunner().invoke(app, ["--version"]).stdout.strip() == f"campaignctl {__version__}"


def test_usage_errors_exit_2(cli):
    result = cli("launch", code=2)
    assert "Missing argument" in result.stderr


def test_help_does_not_import_the_heavy_libraries():
    code = (
        "import sys; from campaignctl.cli import app\n"
        "try: app(['--help'])\nexcept SystemExit: pass\n"
        "heavy = [m for m in ('sqlalchemy', 'sqlmodel', 'psycopg', 'alembic', 'paho', 'yaml', 'pydantic', 'tenacity')\n"
        "         if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
