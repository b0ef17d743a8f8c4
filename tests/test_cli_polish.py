"""The command line's feel: help placeholders, durations, did-you-mean, --db anywhere,
failure reasons grouped, status at 80 columns, ${VAR:-default} in fleet manifests."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from conftest import Cli, add_firmware, csv_fleet, fleet_yaml, write
from hypothesis import given, settings
from hypothesis import strategies as st
from pgserver import free_port
from typer.testing import CliRunner

from campaignctl.cli import app, db_first, main
from campaignctl.cli.campaigns import failure_reasons
from campaignctl.cli.common import duration, progress_lines
from campaignctl.errors import InputError
from campaignctl.values import expand_env

# A placeholder is capital words: NAME, FILE, DURATION, KEY=VALUE, PATH|URL, KEY=VALUE|KEY:=JSON...
PLACEHOLDER = re.compile(r"\[?[A-Z][A-Z0-9_]*(?:(?:=|:=|\|)[A-Z][A-Z0-9_]*)*\]?(?:\.\.\.)?")


def _commands() -> list[tuple[str, object]]:
    """Every command and sub-command of the CLI, by its full name."""
    found = []

    def walk(command: object, path: str) -> None:
        found.append((path, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return found


def _help_problems(path: str, command) -> list[str]:
    ctx = typer.Context(command, info_name=path or "campaignctl")
    problems = []
    usage = " ".join(command.collect_usage_pieces(ctx))
    if re.search(r"[<>{}]", usage):
        problems.append(f"usage {usage!r}")
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:  # hidden
            continue
        names, text = record
        flag = getattr(param, "is_flag", False)
        placeholders = [] if flag else [part for part in names.split() if not part.startswith("-")]
        if param.param_type_name == "argument":
            placeholders = names.split()
        for placeholder in placeholders:
            if not PLACEHOLDER.fullmatch(placeholder.rstrip(",")):
                problems.append(f"{names!r}: placeholder {placeholder!r}")
        if not text or text.startswith("["):
            problems.append(f"{names!r}: no help text")
    return [f"campaignctl {path}: {p}" for p in problems]


def test_every_help_uses_capital_placeholders_and_explains_every_parameter():
    problems = [p for path, command in _commands() for p in _help_problems(path, command)]
    assert not problems, "\n".join(problems)
    for path, _command in _commands():  # and each --help renders so
        result = CliRunner().invoke(app, [*path.split(), "--help"])
        usage = result.stdout.splitlines()[0]
        assert result.exit_code == 0 and usage.startswith("Usage: ") and not re.search(r"[<>{}]", usage), usage


def test_completion_is_offered_and_completes_commands_and_options():
    result = CliRunner().invoke(app, ["--help"])
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout

    def complete(words: str) -> list[str]:
        env = {"_CAMPAIGNCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(words.count(" "))}
        return CliRunner().invoke(app, [], env=env, prog_name="campaignctl").stdout.split()

    assert complete("campaignctl sta") == ["status"]
    assert complete("campaignctl launch roll --ack") == ["--ack-timeout"]


# Durations: 90s / 30m / 2h / 1d and bare seconds, on every duration option.

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}


@settings(max_examples=60, deadline=None)
@given(amount=st.integers(min_value=0, max_value=300), unit=st.sampled_from(sorted(UNITS)))
def test_a_duration_is_read_with_or_without_its_unit(amount, unit):
    assert duration(f"{amount}{unit}", "--timeout") == amount * UNITS[unit]


@settings(max_examples=40, deadline=None)
@given(
    text=st.text(alphabet="0123456789smhdx -.", min_size=1, max_size=6).filter(
        lambda t: not re.fullmatch(r"\s*\d+(\.\d+)?\s*[smhd]?\s*", t)
    )
)
def test_a_bad_duration_is_a_usage_error_naming_the_option(text):
    with pytest.raises(typer.BadParameter) as raised:
        duration(text, "--ack-timeout")
    assert raised.value.param_hint == "--ack-timeout"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_duration_options_take_units_and_say_what_is_wrong(cli):
    result = cli("launch", "nothing", "--ack-timeout", "2x", code=2)
    assert "--ack-timeout" in result.stderr and "90s, 30m, 2h" in result.stderr
    result = cli("status", "nothing", "--watch", "--interval", "50ms", code=2)
    assert "--interval" in result.stderr
    result = cli("launch", "nothing", "--backoff", "1m", "--max-backoff", "2h", "--ack-timeout", "30s", code=1)
    assert "no campaign named 'nothing'" in result.stderr  # the durations were taken


# Did you mean …?


def test_mistyped_names_get_a_suggestion(cli, tmp_path, broker, prefix):
    """Campaigns and devices, the latter in a table too large to be read whole: only the
    names next to the mistyped one are read (the same SQL on both backends)."""
    csv_fleet(cli, tmp_path, broker.url, prefix, 1100, name="s", campaign="roll")
    assert "no campaign named 'rol'; did you mean 'roll'?" in cli("status", "rol", code=1).stderr
    assert "did you mean 'roll'?" in cli("pause", "rol", code=1).stderr
    error = cli("devices", "show", "s-0042", code=1).stderr
    assert re.search(r"no device named 's-0042'; did you mean 's-0042\d'\?", error), error
    assert "did you mean" not in cli("devices", "show", "zzzzzz", code=1).stderr
    error = cli(
        "create",
        "-f",
        write(tmp_path, "c.yaml", "name: x\ndevices: {names: [s-0042]}\nconfigurations: {a: 1}\n"),
        code=1,
    ).stderr
    assert "unknown device(s): s-0042; did you mean 's-00420'?" in error


@pytest.mark.parametrize("backend", ["sqlite"])
def test_mistyped_interfaces_device_types_and_firmware_types_get_a_suggestion(cli, tmp_path):
    cli("devices", "import", write(tmp_path, "f.yaml", fleet_yaml("mqtt://127.0.0.1:1", "p", devices=1)))
    bad = fleet_yaml("mqtt://127.0.0.1:1", "p", devices=0) + (
        "devices:\n  - {name: d1, type: sensor-v3, interface: broker}\n"
        "  - {name: d2, type: sensor-v2, interface: brokr}\n"
    )
    error = cli("devices", "import", write(tmp_path, "bad.yaml", bad.replace("devices: []\n", "")), code=1).stderr
    assert "unknown device type 'sensor-v3'; did you mean 'sensor-v2'?" in error
    error = add_firmware(cli, "1", "https://x/y", code=1, firmware_type="ap").stderr
    assert "no firmware type 'ap'; did you mean 'app'?" in error
    error = add_firmware(cli, "1", "https://x/y", code=1, device_type="sensr-v2").stderr
    assert "no device type named 'sensr-v2'; did you mean 'sensor-v2'?" in error
    error = cli("devices", "resync", "--interface", "brokr", code=1).stderr
    assert "no interface named 'brokr'; did you mean 'broker'?" in error


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (
            "name: x\ndevices: {names: [a]}\nconfigurations: {a: 1}\nrolout: {batches: [1]}\n",
            "c.yaml:4: rolout: unknown field 'rolout'; did you mean 'rollout'?",
        ),
        (
            "name: x\ndevices: {selector: {tyep: s}}\nconfigurations: {a: 1}\n",
            "devices.selector.tyep: unknown field 'tyep'; did you mean 'type'?",
        ),
        (
            "name: x\ndevices: {names: [a]}\nconfigurations: {a: 1}\nrollout: {batches: [1], bake_tme: 1m}\n",
            "unknown field 'bake_tme'; did you mean 'bake_time'?",
        ),
        (
            "name: x\ndevices: {names: [a]}\nfirmware: {type: app, version: '1', form: ['1.*']}\n",
            "unknown field 'form'; did you mean 'from'?",
        ),
    ],
)
def test_mistyped_manifest_fields_get_a_suggestion(tmp_path, manifest, expected):
    from campaignctl.manifests import load_campaign

    with pytest.raises(InputError) as raised:
        load_campaign(write(tmp_path, "c.yaml", manifest))
    assert expected in str(raised.value)


def test_fleet_manifest_fields_get_a_suggestion(tmp_path):
    from campaignctl.manifests import load_fleet

    text = fleet_yaml("mqtt://127.0.0.1:1", "p", devices=1)
    for typo, expected in (
        (text.replace("topic_prefix", "topic_prefx"), "did you mean 'topic_prefix'?"),
        (text.replace("tags:", "tgas:"), "did you mean 'tags'?"),
        (text.replace("firmware_types", "firmware_typs"), "did you mean 'firmware_types'?"),
    ):
        with pytest.raises(InputError) as raised:
            load_fleet(write(tmp_path, "f.yaml", typo))
        assert expected in str(raised.value)


# --db after the command.


@settings(max_examples=50, deadline=None)
@given(
    before=st.lists(st.sampled_from(["status", "roll", "-o", "json", "--wait", "x.db"]), max_size=4),
    after=st.lists(st.sampled_from(["--db", "--db=y", "roll", "z"]), max_size=3),
    value=st.sampled_from(["a.db", "postgresql://u@h/d"]),
    glued=st.booleans(),
)
def test_db_given_anywhere_moves_to_the_front_but_never_after_a_double_dash(before, after, value, glued):
    db = [f"--db={value}"] if glued else ["--db", value]
    args = db_first([*before, *db, "--", *after])
    assert args[: len(db)] == db
    assert args[len(db) :] == [*before, "--", *after]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("form", ["spaced", "glued"])
def test_db_after_the_command_is_used(db_url, tmp_path, monkeypatch, capsys, form):
    Cli(db_url)(
        "create",
        "-f",
        write(tmp_path, "c.yaml", "name: roll\ndevices: {names: [ghost]}\nconfigurations: {a: 1}\n"),
        code=1,
    )  # the database exists now
    db = ["--db", db_url] if form == "spaced" else [f"--db={db_url}"]
    monkeypatch.setattr(sys, "argv", ["campaignctl", "status", "rol", *db])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    assert "no campaign named 'rol'" in capsys.readouterr().err


# A launch whose deliveries fail; status at 80 columns, --watch in a short terminal.


@pytest.mark.parametrize("backend", ["sqlite"])
def test_failed_launch_groups_its_reasons_and_status_fits_a_small_terminal(cli, tmp_path, monkeypatch):
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    csv_fleet(cli, tmp_path, f"mqtt://{down}", "p", 30, name="sensor-with-a-long-name", campaign="roll")
    result = cli("launch", "roll", "--attempts", "1", "--ack-timeout", "5s", code=1)
    assert f"30 × cannot connect to {down}" in result.stderr
    assert "campaignctl retry roll" in result.stderr
    # stderr is no terminal here: a progress line per phase, at least the last one.
    assert "write 30/30" in result.stderr and "deliver 30/30" in result.stderr

    lines = cli("status", "roll", env={"COLUMNS": "80"}).stdout.splitlines()
    assert lines[0].startswith("roll  [") and len(lines[0]) <= 80 and "30 failed" in lines[0]

    # --watch until the second refresh, read as a terminal 80 x 15 would show it.
    from campaignctl.cli import campaigns as commands

    refreshes = []

    def sleep(seconds: float) -> None:
        refreshes.append(seconds)
        if len(refreshes) == 2:
            raise KeyboardInterrupt  # Ctrl-C

    monkeypatch.setattr(commands, "time", SimpleNamespace(sleep=sleep, monotonic=time.monotonic))
    view = cli("status", "roll", "--watch", "--interval", "2s", env={"COLUMNS": "80", "LINES": "15"}).stdout
    lines = view.splitlines()
    assert refreshes == [2.0, 2.0]
    assert len(lines) <= 15 and all(len(line) <= 80 for line in lines), view
    assert re.search(r"… \d+ more device\(s\); --limit 0 shows all, --status filters", view), view
    assert re.fullmatch(r"refreshed \d\d:\d\d:\d\d UTC · every 2s · Ctrl-C to stop", lines[-1]), view


def test_failure_reasons_most_frequent_first_at_most_ten_lines(capsys):
    errors = [{"error": f"reason {n}"} for n in range(15) for _ in range(n + 1)] + [{"error": None}]
    failure_reasons(errors, 7)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "15 × reason 14" and lines[9] == " 6 × reason 5"
    assert lines[10] == "… 16 more in 6 other reason(s): campaignctl jobs show 7"
    assert len(lines) == 11


def test_progress_lines_are_spaced_and_the_last_one_is_always_written(capsys):
    progress = progress_lines(3600)
    for done in range(0, 1001, 100):
        progress("deliver", done, 1000)
    progress("deliver", 1000, 1000)
    assert capsys.readouterr().err.splitlines() == ["deliver 1000/1000"]
    progress = progress_lines(0)
    for done in (0, 500, 1000, 1000):
        progress("write", done, 1000)
    assert capsys.readouterr().err.splitlines() == ["write 0/1000", "write 500/1000", "write 1000/1000"]


# ${VAR} and ${VAR:-default}, in campaign and fleet manifests alike.

NAMES = st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True)
DEFAULTS = st.text(alphabet=st.characters(blacklist_characters="}", blacklist_categories=["Cs"]), max_size=12)


@settings(max_examples=80, deadline=None)
@given(name=NAMES, default=DEFAULTS, value=st.none() | DEFAULTS, before=DEFAULTS, after=DEFAULTS)
def test_a_default_is_taken_only_when_the_variable_is_unset(name, default, value, before, after):
    environ = {} if value is None else {name: value}
    before, after = before.replace("$", "$$"), after.replace("$", "$$")
    text, used = expand_env(f"{before}${{{name}:-{default}}}{after}", environ)
    shown = lambda part: part.replace("$$", "$")  # noqa: E731
    assert text == shown(before) + (default if value is None else value) + shown(after)
    assert used


def test_the_example_fleet_takes_its_broker_from_the_environment(tmp_path):
    from campaignctl.manifests import load_fleet

    example = str(Path(__file__).parent.parent / "examples" / "fleet.yaml")
    assert load_fleet(example, {}).interfaces["broker"]["settings"]["url"] == "mqtt://127.0.0.1:1883"
    other = load_fleet(example, {"MQTT_URL": "mqtt://broker.example:1884"})
    assert other.interfaces["broker"]["settings"]["url"] == "mqtt://broker.example:1884"
    text = Path(example).read_text().replace("${MQTT_URL:-mqtt://127.0.0.1:1883}", "${MQTT_URL}")
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "${MQTT_URL}" in row)
    with pytest.raises(InputError) as raised:
        load_fleet(write(tmp_path, "fleet.yaml", text), {})
    assert str(raised.value).startswith(
        f"{tmp_path / 'fleet.yaml'}:{line}: interfaces.broker.url: environment variable MQTT_URL is not set"
    )
