"""The logs of the long-running commands: --log-level, --log-format json, one line per
event, on stderr."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
from typing import Any

from conftest import campaignctl_cmd, import_fleet, publish, query, subprocess_env, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

KEYS = {"time", "level", "logger", "message"}


def _record(message: str, level: int = logging.WARNING, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("campaignctl.test", level, __file__, 1, "%s", (message,), None)
    record.__dict__.update(extra)
    return record


@settings(max_examples=150, deadline=None)
@given(
    message=st.text(),
    value=st.one_of(st.integers(), st.text(), st.none()),
    level=st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]),
)
def test_each_event_is_one_line_whatever_it_quotes(message, value, level):
    """A message quoting a device (newlines, escape sequences, lone surrogates) stays
    one line: one valid JSON object, or one escaped line of text."""
    from campaignctl.logs import JsonFormatter, TextFormatter

    line = JsonFormatter().format(_record(message, level, device=value))
    assert "\n" not in line and "\r" not in line
    entry = json.loads(line)
    assert KEYS <= set(entry) and entry["message"] == message and entry["device"] == value
    assert entry["level"] == logging.getLevelName(level).lower() and entry["logger"] == "campaignctl.test"
    text = TextFormatter().format(_record(message, level))
    assert "\n" not in text and "\x1b" not in text
    assert text.startswith("warning: ") == (level == logging.WARNING)


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        campaignctl_cmd(*args), env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _stop(proc: subprocess.Popen, lines: list[str]) -> list[dict[str, Any]]:
    """SIGTERM, as a service manager stops it; every line it logged, parsed."""
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    return [json.loads(line) for line in lines + rest.splitlines()]


def _line(proc: subprocess.Popen) -> str:
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line, "the command stopped"
    return line


def test_listen_json_at_warning_level(cli_for, tmp_path, broker, prefix):
    """--log-level warning: only the rejected report is logged, as JSON with the
    device's name; the start and the final counts (info) are not."""
    database = str(tmp_path / "campaignctl.db")
    import_fleet(cli_for(database), tmp_path, broker.url, prefix, 2)
    proc = _start("--db", database, "listen", "--log-format", "json", "--log-level", "warning")
    try:
        # Published until the listener has one recorded (it may not be subscribed yet).
        wait_until(
            lambda: (
                publish(broker.port, f"{prefix}/sensor-0001/state", '{"mode": "eco"}')
                or query(
                    database,
                    "SELECT c.reported FROM device_config c JOIN device d ON d.id = c.device_id "
                    "WHERE d.name = 'sensor-0001' AND c.key = 'mode'",
                )
            ),
            timeout=30,
            interval=0.3,
        )
        publish(broker.port, f"{prefix}/sensor-0002/state", '{"mode": ')
        lines = [_line(proc)]
    except BaseException:
        proc.kill()
        raise
    entries = _stop(proc, lines)
    assert all(KEYS <= set(e) for e in entries)
    assert [e["level"] for e in entries] == ["warning"], entries
    assert "state of sensor-0002 rejected" in entries[0]["message"]


def test_run_logs_json_and_says_its_interval_in_units(cli_for, tmp_path):
    database = str(tmp_path / "campaignctl.db")
    cli_for(database)("db", "upgrade")
    proc = _start("--db", database, "run", "--interval", "120", "--log-format", "json")
    try:
        lines = [_line(proc)]
    except BaseException:
        proc.kill()
        raise
    entries = _stop(proc, lines)
    assert [e["message"] for e in entries] == ["rollout engine: a pass every 2m; Ctrl-C stops", "stopped"]
    assert all(e["level"] == "info" and e["logger"] == "campaignctl" and e["time"].endswith("Z") for e in entries)


def test_duration_options_take_units(cli_for, tmp_path):
    cli = cli_for(str(tmp_path / "campaignctl.db"))
    assert "Invalid value for --timeout: 'soon' is not a duration" in cli("listen", "--timeout", "soon", code=2).stderr
    assert (
        "Invalid value for --poll-interval: at least 0.05s" in cli("simulate", "--poll-interval", "0.01", code=2).stderr
    )
    assert "Invalid value for --interval" in cli("run", "--interval", "-1", code=2).stderr
