"""What devices, manifests, platforms and users wrote is shown as plain text: no Rich
markup or emoji codes interpreted, control characters escaped, long cells cut; and
``-o json`` encodes whatever the database holds."""

from __future__ import annotations

import io
import json
import re
import sys
from typing import Any

import pytest
from conftest import add_firmware, query, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignctl.cli.common import CELL_LIMIT, plain, print_json, table
from campaignctl.values import shown

# Pieces an attacker (or an unlucky platform) puts in a value.
HOSTILE = [
    "[bold]",
    "[/]",
    "[/bold]",
    "[",
    "]",
    "[link=https://evil.example]x[/link]",
    ":smile:",
    ":cross_mark:",
    "\x1b[2J",
    "\x1b]0;title\x07",
    "\x1b]8;;https://evil.example\x1b\\",
    "\x9b31m",
    "\r",
    "\n",
    "\t",
    "\x00",
    "\x7f",
    "\u202e",
    "\u2028",
    "\u200f",
    "\\",
    "\\x1b",
    "\\n",
    "é",
    "日本",
    "🙂",
    "\u0301",
    "\ud800",
    "\udfff",
]
hostile_text = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=8)), max_size=12).map("".join)
long_text = st.builds(lambda piece, n: piece * n, st.sampled_from(HOSTILE), st.integers(1, 400))

# The only escape sequences a terminal may receive: Rich's own colours and styles.
SGR = re.compile(r"\x1b\[[0-9;]*m")
UNESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|n|r|t)")


def _unescape(text: str) -> str:
    return UNESCAPE.sub(lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m[1]) or chr(int(m[1][1:], 16)), text)


def _render(renderable: Any, *, colour: bool = False) -> str:
    from rich.console import Console

    out = io.StringIO()
    console = Console(
        file=out, width=100_000, highlight=False, force_terminal=colour, color_system="truecolor" if colour else None
    )
    console.print(renderable)
    return out.getvalue()


def _no_raw_controls(text: str) -> bool:
    return not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e\ud800-\udfff]", SGR.sub("", text))


@settings(max_examples=200, deadline=None)
@given(st.one_of(hostile_text, long_text))
def test_shown_escapes_every_unsafe_character_and_nothing_else(text):
    escaped = shown(text, None)
    assert _no_raw_controls(escaped) and "\n" not in escaped
    escaped.encode("utf-8")  # a lone surrogate could not be written to any terminal
    if "\\" not in text:  # one rule, reversible: the escapes are those of Python
        assert _unescape(escaped) == text


@settings(max_examples=120, deadline=None)
@given(st.one_of(hostile_text, long_text))
def test_cells_titles_and_styled_text_render_literally(text):
    rendered = _render(table(["value"], [(text,)], title=text))
    assert _no_raw_controls(rendered) and "\x1b" not in rendered
    escaped = shown(text, None)
    if len(text) <= CELL_LIMIT and len(escaped) <= CELL_LIMIT:
        assert escaped in rendered  # markup, emoji codes and brackets exactly as written
    else:
        cell = plain(text).plain
        assert cell.endswith("…") and CELL_LIMIT - 6 < len(cell) <= CELL_LIMIT + 1  # \uXXXX kept whole
        if "\\" not in text:
            assert text.startswith(_unescape(cell[:-1]))  # cut between escapes, never inside one
    coloured = _render(plain(text, limit=None, style="bold red"), colour=True)
    assert _no_raw_controls(coloured) and SGR.sub("", coloured).rstrip("\n") == escaped


@settings(max_examples=150, deadline=None)
@given(st.one_of(hostile_text, long_text), st.integers(1, 300))
def test_log_lines_and_table_cells_are_escaped_and_cut_by_one_rule(text, limit):
    line = shown(text, limit)  # warnings and error messages
    assert plain(text, limit=limit).plain == line  # table cells
    assert _no_raw_controls(line)
    whole = shown(text, None)
    if len(text) <= limit and len(whole) <= limit:
        assert line == whole
    else:  # cut between two escapes (at most 6 characters: \uXXXX), never inside one
        assert line.endswith("…") and limit - 6 < len(line) - 1 <= limit
        assert whole.startswith(line[:-1])


def _json_values(leaf: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        leaf,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)),
        max_leaves=12,
    )


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    hostile_text,
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**64 - 1),
    st.integers(min_value=2**64, max_value=2**200),
    st.integers(min_value=-(2**200), max_value=-(2**63) - 1),
)


def _printed_json(data: Any) -> Any:
    """What ``print_json`` writes on stdout, parsed."""
    buffer = io.BytesIO()
    saved, sys.stdout = sys.stdout, io.TextIOWrapper(buffer, encoding="utf-8")
    try:
        print_json(data)
        return json.loads(buffer.getvalue())
    finally:
        sys.stdout = saved


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json_values(JSON_LEAVES))
def test_print_json_encodes_any_value_as_valid_json(value):
    # As the json module writes it (a high and a low surrogate side by side are one
    # character once in JSON, whoever writes it).
    assert _printed_json({"value": value}) == json.loads(json.dumps({"value": value}))


def test_print_json_takes_values_nested_deeper_than_orjson_allows():
    deep: Any = "\ud800"
    for _ in range(400):
        deep = [deep]
    assert _printed_json({"deep": deep, "big": 2**70}) == {"deep": deep, "big": 2**70}


FLEET = """\
    interfaces:
      devapi: {type: http, url: "http://127.0.0.1:1"}
    device_types:
      cam:
        firmware_types:
          app: {version_key: app_version, url_key: app_url}
    devices:
      - {name: cam-1, type: cam, interface: devapi, tags: {site: "[red]x\\e]0;pwned\\a", note: ":smile: [/]"}}
      - {name: cam-2, type: cam, interface: devapi, tags: {site: "["}}
    """
CAMPAIGN = """\
    name: hostile
    description: "[blink]launch\\e[2J\\u202e :fire: ["
    devices: {selector: {type: cam}}
    configurations: {mode: "[bold]eco\\e[0m", note: "line\\nforged line"}
    expected_state: {mode: "[bold]eco\\e[0m"}
    """
# What devices report and platforms answer.
REPORTED = {"mode": "[/]\x1b[31m:skull:\u202e" + "x" * 1000, "debug": {"[link=x]": ["\x1b]8;;u\x07", "\r\n["]}}
ERROR = "HTTP 500 [bold red]\x1b[2J\x1b]0;owned\x07\r\nError: forged line :boom: " + "[" * 500


@pytest.mark.parametrize("backend", ["sqlite"])
def test_hostile_fleet_renders_plainly_everywhere(cli, tmp_path, db_url):
    from campaignctl import db, fleet

    cli("devices", "import", write(tmp_path, "fleet.yaml", FLEET))
    add_firmware(
        cli,
        "1[/]",
        "https://x.example/[bold]\x1b[5m.bin",
        "--description",
        ":fire: [link=x]\x1b]0;t\x07",
        device_type="cam",
    )
    cli("create", "-f", write(tmp_path, "c.yaml", CAMPAIGN))
    cli("launch", "hostile")
    # cam-1 took its document and reports something else; cam-2's platform failed with a
    # hostile error; an older version left a lone surrogate and a 70-bit integer stored.
    query(
        db_url,
        "UPDATE job_item SET status = 'delivered' WHERE device_id = (SELECT id FROM device WHERE name = 'cam-1')",
    )
    query(
        db_url,
        "UPDATE job_item SET status = 'failed', error = :error, attempts = 5 WHERE device_id = "
        "(SELECT id FROM device WHERE name = 'cam-2')",
        {"error": ERROR},
    )
    engine = db.create_engine(db_url)
    try:
        fleet.report_state(engine, "cam-1", REPORTED)
        fleet.report_state(engine, "cam-2", {"old": 1, "huge": 1})
        for key, text in (("old", '"[\\ud800]"'), ("huge", str(2**70))):
            query(db_url, "UPDATE device_config SET reported = :text WHERE key = :key", {"text": text, "key": key})
        _assert_live_view_escapes_only_styles(engine)
    finally:
        engine.dispose()

    out = {}
    for args in (
        ["status", "hostile"],
        ["devices", "show", "cam-1"],
        ["devices", "show", "cam-2"],
        ["devices", "list"],
        ["list"],
        ["show", "hostile"],
        ["jobs", "list"],
        ["jobs", "show", "1"],
        ["firmwares", "list"],
    ):
        result = cli(*args, env={"COLUMNS": "200"})
        _assert_plain(result.stdout + result.stderr)
        out[" ".join(args)] = result.stdout
    assert "[/]" in out["status hostile"] and ":skull:" in out["status hostile"] and "…" in out["status hostile"]
    assert "[bold red]\\x1b[2J" in out["jobs show 1"] and ":smile: [/]" in out["devices list"]
    assert "[blink]launch\\x1b[2J\\u202e :fire: [" in out["show hostile"]
    assert "https://x.example/[bold]\\x1b[5m.bin" in out["firmwares list"]

    for args in (
        ["status", "hostile"],
        ["devices", "show", "cam-1"],
        ["devices", "show", "cam-2"],
        ["devices", "list"],
        ["list"],
        ["show", "hostile"],
        ["jobs", "show", "1"],
        ["firmwares", "list"],
    ):
        cli.json(*args)  # parses
    reported = {e["key"]: e["reported"] for e in cli.json("devices", "show", "cam-2")["configuration"]}
    assert (reported["old"], reported["huge"]) == ("[\ud800]", 2**70)
    assert cli.json("jobs", "show", "1")["errors"][0]["error"] == ERROR  # json gives everything
    assert any(d["reason"] == ERROR for d in cli.json("status", "hostile")["devices"])

    # The exit code of --wait tells how the campaign ended, whatever the devices wrote.
    waited = cli("status", "hostile", "--wait", "--timeout", "0s", code=4)
    _assert_plain(waited.stdout + waited.stderr)
    assert (
        json.loads(cli("status", "hostile", "--wait", "--timeout", "0s", "-o", "json", code=4).stdout)["exit_code"] == 4
    )


def _assert_plain(output: str) -> None:
    assert "Traceback" not in output and "MarkupError" not in output
    assert _no_raw_controls(output) and "\x1b" not in output


def _assert_live_view_escapes_only_styles(engine: Any) -> None:
    """``status --watch`` and ``--wait`` on a terminal: colours, and nothing a device wrote."""
    from campaignctl.cli.campaigns import status_view
    from campaignctl.supervision import campaign_status

    rendered = _render(status_view(campaign_status(engine, "hostile"), None, 20), colour=True)
    assert "\x1b[" in rendered and _no_raw_controls(rendered) and "\x1b" not in SGR.sub("", rendered)
    assert "[/]" in SGR.sub("", rendered)
