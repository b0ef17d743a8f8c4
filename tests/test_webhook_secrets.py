"""Secrets through a third party: a webhook platform that echoes the request back, in
every encoding, in its reason phrase, its body and its redirects."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest
from conftest import db_dump, free_port, write
from hypothesis import given, settings
from hypothesis import strategies as st
from test_webhook import MisbehavingApi

BASIC = base64.b64encode(b"alice:pw-b4sic-s3cret").decode()
SECRETS = {  # environment variable → value; what the test looks for everywhere afterwards
    "THINGS_AUTH": f"Basic {BASIC}",
    "THINGS_KEY": "key-9f8e7d6c5b4a",
    "DOC_TOKEN": 'tok/5ecret value+"q"',
}
URL_PASSWORD, URL_TOKEN = "url-pa55word", "qtoken-1a2b3c4d"


def forms(value: str) -> set[str]:
    """How a platform may echo ``value``."""
    raw = value.encode()
    b64 = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return (
        {value, json.dumps(value)[1:-1], quote(value), quote(value, safe=""), quote_plus(value)}
        | b64
        | {b.rstrip("=") for b in b64}
    )


def echo(request_text: str, values: list[str]) -> str:
    """Everything the request held, in every form, whole and cut short."""
    out = [request_text, json.dumps(request_text)]
    for value in values:
        for form in forms(value):
            out += [form, form[:6], form[:-2]]
    return " | ".join(out)


class EchoingPlatform(MisbehavingApi):
    """A real aiohttp server on 127.0.0.1 that answers every request with the request:

    reject-*  400, echo in the reason phrase and the body     fail-*  500, the same
    busy-*    429, the same                                    loop-*  302 to itself, token in the query
    ftp-*     302 to an ftp:// URL carrying the token
    """

    def __init__(self) -> None:
        super().__init__()
        self.hits, self.echoed = 0, ""

    async def _handle(self, request):
        from aiohttp import web

        self.hits += 1
        body = await request.text()
        values = [*request.headers.values(), body, *request.query.values()]
        try:
            values += [str(v) for v in json.loads(body)["configuration"].values()]
        except ValueError:
            pass
        text = self.echoed = echo(f"{request.method} {request.path_qs} {dict(request.headers)} {body}", values)
        kind = request.match_info["device"].split("-")[0]
        token = SECRETS["DOC_TOKEN"]
        if kind == "loop":
            raise web.HTTPFound(f"{request.path}?echo={quote(token)}&n={self.hits}")
        if kind == "ftp":
            raise web.HTTPFound(f"ftp://127.0.0.1/{quote(token)}?auth={quote(BASIC)}")
        status = {"reject": 400, "fail": 500, "busy": 429}[kind]
        reason = text.replace("\r", " ").replace("\n", " ")[:4000]
        return web.Response(status=status, reason=reason, text=text, headers={"X-Echo": reason[:2000]})


def _leaks(text: str, secrets: list[str]) -> list[str]:
    """The forms of ``secrets`` (or their first 6 characters) found in ``text``."""
    return sorted({form[:6] for secret in secrets for form in forms(secret) if form[:6] in text})


def test_an_echoing_platform_gets_no_secret_into_status_jobs_or_the_database(cli_for, tmp_path, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    database = str(tmp_path / "c.db")
    cli = cli_for(database)
    closed = free_port()
    names = ["reject-1", "fail-1", "busy-1", "loop-1", "ftp-1"]
    platform = EchoingPlatform().start()
    try:
        devices = "".join(f"  - {{name: {n}, type: thing, interface: things}}\n" for n in names)
        cli(
            "devices",
            "import",
            write(
                tmp_path,
                "fleet.yaml",
                f"""\
interfaces:
  things:
    type: webhook
    url: http://127.0.0.1:{platform.port}/things/{{device}}/desired
    headers: {{Authorization: THINGS_AUTH, X-Api-Key: THINGS_KEY}}
    timeout: 5
  gone:
    type: webhook
    url: http://ops:{URL_PASSWORD}@127.0.0.1:{closed}/things/{{device}}?token={URL_TOKEN}
device_types:
  thing: {{}}
devices:
{devices}  - {{name: refused-1, type: thing, interface: gone}}
""",
            ),
        )
        cli(
            "create",
            "-f",
            write(
                tmp_path,
                "c.yaml",
                """\
            name: leak
            devices: {selector: {type: thing}}
            configurations: {app_token: '${DOC_TOKEN}', mode: eco}
            """,
            ),
        )
        launch = cli("launch", "leak", "--attempts", "2", "--backoff", "0.01", "--max-backoff", "0.02", code=1)
        assert platform.hits >= len(names)  # every device reached the platform, which echoed all:
        assert all(_leaks(platform.echoed, [secret]) for secret in SECRETS.values())
    finally:
        platform.stop()
    job = cli.json("jobs", "show", "1")
    status = cli.json("status", "leak")
    errors = {e["device"]: e["error"] for e in job["errors"]}
    assert errors["reject-1"] == "HTTP 400 Bad Request" and errors["fail-1"] == "HTTP 500 Internal Server Error"
    assert errors["busy-1"] == "HTTP 429 Too Many Requests"
    assert errors["loop-1"].endswith("too many redirects") and "non-HTTP" in errors["ftp-1"]
    assert errors["refused-1"].startswith(f"cannot connect to 127.0.0.1:{closed}")
    everything = list(SECRETS.values()) + [URL_PASSWORD, URL_TOKEN, "alice:pw-b4sic-s3cret", "pw-b4sic-s3cret"]
    shown = json.dumps(job) + json.dumps(status) + launch.stdout + launch.stderr
    assert _leaks(shown, everything) == []
    # The database holds the document's token and the interface's URL where the operator
    # put them (campaign, job snapshot, desired entries, interface); the header values
    # nowhere, and nothing the platform answered anywhere.
    headers_only = [SECRETS["THINGS_AUTH"], SECRETS["THINGS_KEY"], "alice:pw-b4sic-s3cret", "pw-b4sic-s3cret"]
    tables = _tables(db_dump(database))
    assert _leaks("\n".join(tables.values()), headers_only) == []
    operator_input = {"campaign", "job", "device_config", "interface"}
    assert _leaks("\n".join(t for name, t in tables.items() if name not in operator_input), everything) == []
    assert {"job_item", "job_item_history"} <= set(tables)


def _tables(dump: list[str]) -> dict[str, str]:
    """db_dump's lines grouped by table: name → its rows as one text."""
    tables: dict[str, list[str]] = {}
    for line in dump:
        if line.startswith("table "):
            rows = tables[line[6:]] = []
        else:
            rows.append(line)
    return {name: "\n".join(rows) for name, rows in tables.items()}


SECRET_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="*"), min_size=4, max_size=24)


@settings(max_examples=300, deadline=None)
@given(
    secret=SECRET_TEXT,
    before=st.text(max_size=20),
    after=st.text(max_size=20),
    cut=st.integers(min_value=4, max_value=64),
    data=st.data(),
)
def test_the_redactor_masks_every_form_and_every_prefix(secret, before, after, cut, data):
    from campaignctl.interfaces.webhook import Redactor

    form = data.draw(st.sampled_from(sorted(forms(secret))))
    redacted = Redactor([secret])(before + form[:cut] + after)
    # No form's first four characters survive anywhere: neither whole nor truncated.
    assert all(f[:4] not in redacted for f in forms(secret)), redacted


@pytest.mark.parametrize(
    "header, hidden",
    [
        (f"Basic {BASIC}", ["alice:pw-b4sic-s3cret", "pw-b4sic-s3cret", BASIC]),
        ("Bearer tk-4f9a1c77", ["tk-4f9a1c77", "Bearer tk-4f9a1c77"]),
    ],
)
def test_request_secrets_include_the_parts_of_an_authorization_header(header, hidden):
    from campaignctl.interfaces.webhook import request_secrets

    found = request_secrets("http://u:p4ss@h/x?k=v4lue", {"Authorization": header}, b'{"configuration":{}}')
    assert set(hidden) <= set(found) and {"p4ss", "v4lue"} <= set(found)


def test_set_config_takes_a_secret_from_stdin_or_the_environment_never_the_command_line(cli_for, tmp_path):
    cli = cli_for(str(tmp_path / "c.db"))
    cli(
        "devices",
        "import",
        write(
            tmp_path,
            "fleet.yaml",
            f"""\
        interfaces:
          hook: {{type: webhook, url: 'http://127.0.0.1:{free_port()}/{{device}}'}}
        device_types:
          thing: {{}}
        devices:
          - {{name: gw-01, type: thing, interface: hook}}
        """,
        ),
    )
    cli("devices", "set-config", "gw-01", "--secret-stdin", "api_token", "--no-deliver", input="tk-stdin 1\n")
    cli(
        "devices",
        "set-config",
        "gw-01",
        "mode=eco",
        "--secret-env",
        "db_pass=DB_PASS",
        "--no-deliver",
        env={"DB_PASS": "pw from env\n"},
    )
    shown = {e["key"]: e for e in cli.json("devices", "show", "gw-01")["configuration"]}
    assert {k: (e["desired"], e["secret"]) for k, e in shown.items()} == {
        "api_token": ("***", True),
        "db_pass": ("***", True),
        "mode": ("***", True),
    }
    clear = {e["key"]: e["desired"] for e in cli.json("devices", "show", "gw-01", "--show-secrets")["configuration"]}
    assert clear == {"api_token": "tk-stdin 1", "db_pass": "pw from env\n", "mode": "eco"}

    def refused(*args: str, env: dict[str, str] | None = None, input: str | bytes | None = None) -> str:
        result = cli("devices", "set-config", "gw-01", *args, "--no-deliver", code=1, env=env, input=input)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        return result.stderr

    assert "environment variable NOPE_VAR is not set" in refused("--secret-env", "k=NOPE_VAR")
    assert "--secret-env takes KEY=VAR" in refused("--secret-env", "k")
    assert "the value of k is empty" in refused("--secret-stdin", "k", input="\n")
    assert "k is given more than once" in refused("k=1", "--secret-stdin", "k", input="v")
    assert "give at least one KEY=VALUE" in refused()
    # Bytes that are not UTF-8: on stdin, and in a variable (os.environ holds them as lone
    # surrogates), refused as a KEY=VALUE argument holding them is.
    assert "--secret-stdin k: not UTF-8 text (invalid continuation byte at byte 2)" in refused(
        "--secret-stdin", "k", input=b"ok\xe9t\n"
    )
    assert "--secret-env k=BAD_VAR takes text: text holds a lone surrogate '\\udce9'" in refused(
        "--secret-env", "k=BAD_VAR", env={"BAD_VAR": "ok\udce9t"}
    )
    assert [e["desired"] for e in cli.json("devices", "show", "gw-01", "--show-secrets")["configuration"]] == [
        "tk-stdin 1",
        "pw from env\n",
        "eco",
    ]  # nothing changed by the refused ones
