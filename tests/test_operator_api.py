"""The operator API (/api/v1/) of `campaignctl serve`, against a real server on 127.0.0.1.

One server (and one SQLite database) serves the whole module; the tests use campaigns of
their own. Every response body any test receives is kept, and the last test looks for
every secret the module set in all of them.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import pytest
from conftest import Cli, db_dump, http, query, wait_until, write
from hypothesis import given, settings
from hypothesis import strategies as st

FLEET = """\
    interfaces:
      devapi: {type: http, url: "http://127.0.0.1:1"}
    device_types:
      cam:
        firmware_types:
          app: {version_key: app_version, url_key: app_url, token_key: app_token}
    devices:
      - {name: cam-1, type: cam, interface: devapi, tags: {site: a}}
      - {name: cam-2, type: cam, interface: devapi, tags: {site: a}}
      - {name: cam-3, type: cam, interface: devapi, tags: {site: b}}
    """

# Secrets set through the API or the CLI: none may come back in any response.
VARIABLE_VALUE = "var-secret-5f1c9a"
FIRMWARE_TOKEN = "fw-token-8b22d0"
CONFIG_SECRET = "config-secret-77e1aa"

RESPONSES: list[bytes] = []


class Api:
    def __init__(self, base: str, cli: Cli, db_url: str, tokens: dict[str, str], device_secret: str) -> None:
        self.base, self.cli, self.db_url, self.tokens, self.device_secret = base, cli, db_url, tokens, device_secret

    def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "alice",
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, decoded JSON body) of one request as operator ``token`` (a
        name of ``tokens``, or a raw token)."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        if body is not None and not isinstance(body, (str, bytes)):
            body, content_type = json.dumps(body), content_type or "application/json"
        if content_type:
            sent["Content-Type"] = content_type
        status, got, raw = http(method, self.base + path, headers=sent, body=body)
        RESPONSES.append(raw + json.dumps(got).encode())
        return status, got, json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    from campaignctl import db
    from campaignctl.server import Server

    tmp = tmp_path_factory.mktemp("operator-api")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAMPAIGNCTL_KEY_FILE", str(tmp / "campaignctl.key"))
        db_url = str(tmp / "campaignctl.db")
        cli = Cli(db_url)
        cli("devices", "import", write(tmp, "fleet.yaml", FLEET))
        tokens = {name: cli("operators", "add", name).stdout.strip() for name in ("alice", "bob", "gone")}
        cli("operators", "revoke", "gone")
        engine = db.create_engine(db_url)
        server = Server(engine, port=0, listen_mqtt=False, engine_interval=0.2).start()
        try:
            secret = cli("devices", "credentials", "cam-1").stdout.strip()
            yield Api(f"http://127.0.0.1:{server.port}", cli, db_url, tokens, secret)
        finally:
            server.stop()
            engine.dispose()


def manifest(name: str, **extra: Any) -> str:
    """A campaign manifest as YAML: every device of type cam, one configuration key."""
    lines = [f"name: {name}", "devices:", "  selector: {type: cam}", "configurations:", "  interval: 30"]
    lines += [f"{k}: {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


# Tables a request could write; the rollout engine's own bookkeeping (jobs, shards) is left out.
WRITTEN = ("campaign", "device", "device_config", "event", "firmware", "operator")


def written(db_url: str) -> list[str]:
    """The rows of WRITTEN, once the rollout engine of ``serve`` has written every batch
    that earlier tests launched (its writes are not the requests')."""
    wait_until(
        lambda: (
            not query(
                db_url,
                "SELECT 1 FROM job_batch b JOIN job j ON j.id = b.job_id JOIN campaign c ON c.id = j.campaign_id "
                "WHERE c.status = 'running' AND b.status IN ('pending', 'releasing')",
            )
        ),
        timeout=60,
    )
    rows, keep = [], False
    for line in db_dump(db_url):  # without operator.last_used_at, stamped in the background
        if line.startswith("table "):
            keep = line.split()[1] in WRITTEN
        if keep:
            rows.append(line)
    return rows


def test_create_from_yaml_and_from_json(api):
    status, _, body = api("POST", "/api/v1/campaigns", manifest("yaml-1"), content_type="application/yaml")
    assert (status, body) == (201, {"name": "yaml-1", "action": "created", "changes": []})
    status, _, body = api("GET", "/api/v1/campaigns/yaml-1")
    assert status == 200 and body == api.cli.json("show", "yaml-1") and body["devices"]["count"] == 3

    as_json = {"name": "json-1", "devices": {"names": ["cam-1"]}, "configurations": {"interval": 10}}
    assert api("POST", "/api/v1/campaigns", as_json)[0] == 201
    assert api("POST", "/api/v1/campaigns", as_json)[2]["action"] == "unchanged"
    changed = {**as_json, "description": "now with one"}
    assert api("POST", "/api/v1/campaigns", changed)[2] == {
        "name": "json-1",
        "action": "updated",
        "changes": ["description"],
    }
    # Plain text is YAML too; the list is list -o json's.
    assert api("POST", "/api/v1/campaigns", manifest("text-1"), content_type="text/plain")[0] == 201
    status, _, listed = api("GET", "/api/v1/campaigns")
    assert status == 200 and listed == api.cli.json("list")
    assert {"yaml-1", "json-1", "text-1"} <= {c["name"] for c in listed}
    assert api("DELETE", "/api/v1/campaigns/text-1")[0] == 204
    assert api("GET", "/api/v1/campaigns/text-1")[0] == 404


def test_variables_come_from_the_request_and_stay_secret(api, monkeypatch):
    # The server's environment is never read for a request's manifest.
    monkeypatch.setenv("SERVER_ONLY", "from-the-server")
    wrapped = {"manifest": manifest("vars-1") + "expected_state: {token: '${APP_TOKEN}'}\n"}
    status, _, body = api("POST", "/api/v1/campaigns", wrapped)
    assert status == 400 and body["field"] == "expected_state.token" and "APP_TOKEN is not set" in body["error"]
    leak = {"manifest": manifest("vars-1") + "expected_state: {token: '${SERVER_ONLY}'}\n"}
    assert api("POST", "/api/v1/campaigns", leak)[0] == 400
    wrapped["variables"] = {"APP_TOKEN": VARIABLE_VALUE}
    assert api("POST", "/api/v1/campaigns", wrapped)[0] == 201
    assert api("GET", "/api/v1/campaigns/vars-1")[2]["expected_state"] == {"token": "***"}
    stored = query(api.db_url, "SELECT spec FROM campaign WHERE name = 'vars-1'")[0][0]
    assert VARIABLE_VALUE in stored


BAD = [
    # (body, content type, field, line)
    (
        "name: bad-1\ndevices:\n  selector: {type: cam}\nconfigurations:\n  interval: 30\nrollout: {batches: -1}\n",
        "application/yaml",
        "rollout.batches",
        6,
    ),
    ("name: bad-2\ndevices: {}\nconfigurations: {a: 1}\n", "application/yaml", "devices", 2),
    (
        '{"name": "bad-3",\n "devices": {"names": ["cam-1"]},\n "configurations": {"a": 1},\n "colour": "red"}',
        "application/json",
        "colour",
        4,
    ),
    ("name: [unclosed\n", "application/yaml", None, 2),
    (b"name: caf\xe9\n", "application/yaml", None, None),
    ('{"manifest": 3}', "application/json", "manifest", None),
]


@pytest.mark.parametrize(("body", "content_type", "field", "line"), BAD)
def test_a_bad_manifest_is_400_with_field_and_line_and_changes_nothing(api, body, content_type, field, line):
    api("GET", "/api/v1/jobs")  # the operator's last use is recorded before the database is compared
    before = written(api.db_url)
    status, _, answer = api("POST", "/api/v1/campaigns", body, content_type=content_type)
    assert status == 400, answer
    assert answer["source"] == "request body" and answer["field"] == field and answer["line"] == line
    assert answer["error"].startswith("request body")
    assert written(api.db_url) == before


def test_refusals_and_their_statuses(api):
    api("GET", "/api/v1/jobs")
    before = written(api.db_url)
    big = "name: big\n" + "#" * (4 * 1024 * 1024) + "\n"
    assert api("POST", "/api/v1/campaigns", big, content_type="application/yaml")[0] == 413
    status, _, body = api("POST", "/api/v1/campaigns/nowhere/launch")
    assert status == 404 and "nowhere" in body["error"]
    status, _, body = api("POST", "/api/v1/campaigns/nowhere/launch", {"when": "now"})
    assert (status, body["field"]) == (400, "when")
    assert api("POST", "/api/v1/campaigns/nowhere/launch", {"now": "yes"})[2]["field"] == "now"
    assert api("GET", "/api/v1/campaigns/nowhere/status?limit=-1")[2]["field"] == "limit"
    assert api("GET", "/api/v1/devices?offset=%C2%B2")[2]["field"] == "offset"  # ², a digit int() refuses
    assert api("GET", "/api/v1/jobs/abc")[0] == 400 and api("GET", "/api/v1/jobs/999")[0] == 404
    assert api("GET", "/api/v1/devices?tag=site")[2]["field"] == "tag"
    assert api("POST", "/api/v1/devices/cam-1/config", {"values": {}})[0] == 400
    # NUL characters, which no name holds and PostgreSQL cannot store, are refused up front.
    assert api("GET", "/api/v1/campaigns/a%00b")[2]["field"] == "url"
    assert api("GET", "/api/v1/devices?type=a%00")[2]["field"] == "url"
    nul = {"device_type": "cam", "firmware_type": "app", "version": "1\u0000", "url": "x://y"}
    assert api("POST", "/api/v1/firmwares", json.dumps(nul), content_type="application/json")[2]["field"] == "version"
    assert written(api.db_url) == before


def test_launch_pause_resume_status_paging_and_conflicts(api):
    assert api("POST", "/api/v1/campaigns", manifest("roll-1"), content_type="application/yaml")[0] == 201
    started = time.monotonic()
    status, _, job = api("POST", "/api/v1/campaigns/roll-1/launch")
    # The request creates the job; the rollout engine of serve delivers it.
    assert status == 200 and job["campaign"] == "roll-1" and job["total"] == 3 and time.monotonic() - started < 5
    assert api("GET", f"/api/v1/jobs/{job['id']}")[2]["id"] == job["id"]
    assert job["id"] in {j["id"] for j in api("GET", "/api/v1/jobs")[2]}

    def syncing() -> Any:
        data = api("GET", "/api/v1/campaigns/roll-1/status")[2]
        return data if data["summary"]["syncing"] == 3 else None

    data = wait_until(syncing)
    cli_status = api.cli.json("status", "roll-1")
    # status -o json's shape; the engine may move the batch on between the two reads.
    assert data.keys() == cli_status.keys() and data["devices"] == cli_status["devices"]
    names = [d["device"] for d in data["devices"]]
    assert names == ["cam-1", "cam-2", "cam-3"]
    pages = [
        [d["device"] for d in api("GET", f"/api/v1/campaigns/roll-1/status?limit=2&offset={o}")[2]["devices"]]
        for o in (0, 2, 4)
    ]
    assert pages == [names[:2], names[2:], []]
    assert api("GET", "/api/v1/campaigns/roll-1/status?status=valid")[2]["devices"] == []
    assert api("GET", "/api/v1/campaigns/roll-1/status?status=nope")[0] == 400

    # A launched campaign cannot change, be deleted or be launched again.
    status, _, body = api("POST", "/api/v1/campaigns", manifest("roll-1", description="other"))
    assert status == 409 and "can no longer be changed" in body["error"]
    assert api("DELETE", "/api/v1/campaigns/roll-1")[0] == 409
    assert api("POST", "/api/v1/campaigns/roll-1/launch")[0] == 409

    status, _, body = api("POST", "/api/v1/campaigns/roll-1/pause", token="bob")
    assert status == 200 and body["status"] == "paused"
    assert api.cli.json("status", "roll-1")["status"] == "paused"
    assert api("POST", "/api/v1/campaigns/roll-1/resume")[2]["status"] == "running"
    assert api("POST", "/api/v1/campaigns/roll-1/retry")[0] == 409  # nothing failed
    status, _, body = api("POST", "/api/v1/campaigns/roll-1/cancel")
    assert status == 200 and body["job"]["id"] == job["id"]
    assert api.cli.json("show", "roll-1")["status"] == "cancelled"

    # Who did what: the operators by name.
    events = api.cli.json("events", "--campaign", "roll-1")["events"]
    assert [(e["actor"], e["action"]) for e in events if e["actor"] != "engine"] == [
        ("alice", "campaign.created"),
        ("alice", "campaign.launched"),
        ("bob", "campaign.paused"),
        ("alice", "campaign.resumed"),
        ("alice", "campaign.cancelled"),
    ]


@pytest.mark.parametrize("who", [None, "wrong", "gone", "device", "basic"])
def test_no_valid_operator_token_is_401_and_writes_nothing(api, who):
    api("GET", "/api/v1/jobs")
    before = written(api.db_url)
    token = {"wrong": "cco_" + "x" * 43, "gone": "gone", "device": api.device_secret}.get(who or "", None)
    headers = {"Authorization": "Basic YWxpY2U6eA=="} if who == "basic" else None
    requests = [
        ("GET", "/api/v1/campaigns", None),
        ("POST", "/api/v1/campaigns", manifest("never")),
        ("POST", "/api/v1/campaigns/yaml-1/launch", None),
        ("POST", "/api/v1/devices/cam-1/config", {"values": {"a": 1}}),
        ("POST", "/api/v1/firmwares", {"device_type": "cam", "firmware_type": "app", "version": "9", "url": "x://y"}),
    ]
    for method, path, body in requests:
        status, headers_got, answer = api(method, path, body, token=token, headers=headers)
        assert status == 401 and headers_got["www-authenticate"].startswith("Bearer"), (path, answer)
        assert set(answer) == {"error"}
    assert written(api.db_url) == before


def test_operator_tokens_do_not_open_the_device_api(api):
    url = "/v1/devices/cam-1/configuration"
    assert api("GET", url, token=api.device_secret)[0] == 200
    for name in ("alice", "bob"):
        assert api("GET", url, token=name)[0] == 401
        assert api("PUT", "/v1/devices/cam-1/state", '{"a": 1}', token=name)[0] == 401


def test_devices_firmwares_and_set_config(api):
    status, headers, devices = api("GET", "/api/v1/devices?type=cam&tag=site=a&limit=1")
    assert status == 200 and [d["name"] for d in devices] == ["cam-1"] and headers["x-total-count"] == "2"
    assert (
        api("GET", "/api/v1/devices?tag=site=a&offset=1")[2] == api.cli.json("devices", "list", "--tag", "site=a")[1:]
    )
    status, _, body = api("POST", "/api/v1/devices/cam-2/config", {"values": {"wifi": CONFIG_SECRET}, "secret": True})
    assert status == 200 and body["device"] == "cam-2" and body["error"] is None
    shown = api("GET", "/api/v1/devices/cam-2")[2]
    assert shown == api.cli.json("devices", "show", "cam-2")
    assert {e["key"]: e["desired"] for e in shown["configuration"]}["wifi"] == "***"
    assert api("GET", "/api/v1/devices/ghost")[0] == 404

    firmware = {"device_type": "cam", "firmware_type": "app", "version": "2.0", "url": "https://f.example/2.0.bin"}
    status, _, body = api("POST", "/api/v1/firmwares", {**firmware, "token": FIRMWARE_TOKEN, "size": 10})
    assert (status, body) == (201, {"device_type": "cam", "firmware_type": "app", "version": "2.0"})
    assert api("POST", "/api/v1/firmwares", firmware)[0] == 409
    assert api("POST", "/api/v1/firmwares", {**firmware, "firmware_type": "nope"})[0] == 404
    listed = api("GET", "/api/v1/firmwares?device_type=cam")[2]
    assert listed == api.cli.json("firmwares", "list") and listed[0]["token"] == "***"


def test_last_use_is_recorded_and_tokens_are_never_listed(api):
    api("GET", "/api/v1/jobs", token="bob")
    # Written after the response, by a thread of its own (a hint no request waits for).
    listed = wait_until(
        lambda: (found := {o["name"]: o for o in api.cli.json("operators", "list")})["bob"]["last_used_at"] and found
    )
    assert listed["gone"]["status"] == "revoked"
    assert not listed["gone"]["last_used_at"]
    stored = "\n".join(db_dump(api.db_url))
    assert not any(token in stored for token in api.tokens.values())
    added = api.cli("operators", "add", "carol")
    assert added.stdout.startswith("cco_") and "not shown again" in added.stderr
    assert "exists" in api.cli("operators", "add", "carol", code=1).stderr
    assert "no operator named" in api.cli("operators", "revoke", "nobody", code=1).stderr


def test_json_nested_past_the_state_depth_is_a_400(api):
    """Nesting too deep for Python (or past the 32 levels a device may report) is bad
    input, never a RecursionError; and set-config values are held to the state's depth."""
    before = written(api.db_url)
    deep = "[" * 3000 + "]" * 3000
    config = "/api/v1/devices/cam-1/config"
    status, _, body = api("POST", config, f'{{"values": {{"k": {deep}}}}}', content_type="application/json")
    assert status == 400 and "deeply" in body["error"]
    status, _, body = api("POST", config, {"values": {"k": json.loads("[" * 40 + "]" * 40)}})
    assert status == 400 and "deeply" in body["error"]
    for content_type in ("application/json", "application/yaml"):
        assert api("POST", "/api/v1/campaigns", "[" * 5000, content_type=content_type)[0] == 400
    assert api("POST", "/api/v1/campaigns/x/launch", "[" * 5000, content_type="application/json")[0] == 400
    assert written(api.db_url) == before
    assert api("POST", config, {"values": {"k": json.loads("[" * 30 + "]" * 30)}, "deliver": False})[0] == 200


def test_retrying_an_empty_list_of_devices_is_a_400(api):
    api("POST", "/api/v1/campaigns", manifest("retry-none"), content_type="application/yaml")
    status, _, body = api("POST", "/api/v1/campaigns/retry-none/retry", {"devices": []})
    assert (status, body["field"]) == (400, "devices")


def test_lists_are_paged(api):
    api("POST", "/api/v1/campaigns", manifest("paged-1"), content_type="application/yaml")
    status, headers, everything = api("GET", "/api/v1/campaigns?limit=5000")
    assert status == 200 and int(headers["x-total-count"]) == len(everything) >= 1
    assert api("GET", "/api/v1/campaigns?limit=1&offset=0")[2] == everything[:1]
    status, headers, listed = api("GET", "/api/v1/jobs?limit=1&offset=0")
    assert status == 200 and len(listed) <= 1 and int(headers["x-total-count"]) >= len(listed)
    assert api("GET", "/api/v1/jobs?offset=9223372036854775808")[2]["field"] == "offset"


def test_a_database_that_cannot_be_used_is_a_503_with_the_reason_on_both(tmp_path, monkeypatch):
    """The API and the web front-end map errors through one call: the same 503."""
    from campaignctl import db
    from campaignctl.server import Server

    monkeypatch.setenv("CAMPAIGNCTL_KEY_FILE", str(tmp_path / "campaignctl.key"))
    # An engine of a PostgreSQL server that is down (nothing listens there): made as
    # create_engine makes it, without its first connection, which would fail.
    location = db.locate("postgresql://campaignctl@127.0.0.1:1/nowhere")
    engine = db._postgres_engine(location)
    engine.info_location = location  # type: ignore[attr-defined]
    server = Server(engine, port=0, listen_mqtt=False, engine_interval=None).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        answers = [
            http("GET", f"{base}/api/v1/campaigns", headers={"Authorization": "Bearer cco_x"}),
            http(
                "GET", f"{base}/ui/campaigns", headers={"Cookie": f"campaignctl_session=YWxpY2U.{int(time.time())}.x"}
            ),
            http(
                "POST",
                f"{base}/ui/login",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                body="token=cco_x",
            ),
        ]
    finally:
        server.stop()
        engine.dispose()
    for status, _, body in answers:
        assert status == 503 and b"internal error" not in body and b"127.0.0.1" in body, body


def test_openapi_describes_the_operator_api(api):
    spec = api("GET", "/openapi.json", token=None)[2]
    assert spec["components"]["securitySchemes"]["operatorToken"]["scheme"] == "bearer"
    operations = [(p, o) for p, ops in spec["paths"].items() if p.startswith("/api/v1/") for o in ops.values()]
    assert len(operations) == 19
    assert all(o["security"] == [{"operatorToken": []}] and "422" not in o["responses"] for _, o in operations)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_on_postgresql(cli, db_url, tmp_path):
    from campaignctl import db
    from campaignctl.server import Server

    cli("devices", "import", write(tmp_path, "fleet.yaml", FLEET))
    token = cli("operators", "add", "pat").stdout.strip()
    engine = db.create_engine(db_url)
    server = Server(engine, port=0, listen_mqtt=False, engine_interval=0.2).start()
    try:
        pg = Api(f"http://127.0.0.1:{server.port}", cli, db_url, {"pat": token}, "")
        assert pg("POST", "/api/v1/campaigns", manifest("pg-1"), token="pat")[0] == 201
        assert pg("POST", "/api/v1/campaigns", manifest("pg-1", description="x"), token="pat")[2]["action"] == "updated"
        before = written(db_url)
        assert pg("POST", "/api/v1/campaigns", "name: [", content_type="application/yaml", token="pat")[0] == 400
        assert pg("GET", "/api/v1/devices/a%00b", token="pat")[0] == 400
        assert written(db_url) == before
        assert pg("POST", "/api/v1/campaigns/pg-1/launch", {"now": True}, token="pat")[0] == 200
        wait_until(
            lambda: pg("GET", "/api/v1/campaigns/pg-1/status?limit=1", token="pat")[2]["summary"]["syncing"] == 3
        )
        assert pg("POST", "/api/v1/campaigns/pg-1/pause", token="pat")[2]["status"] == "paused"
        assert ("pat", "campaign.paused") in query(db_url, "SELECT actor, action FROM event WHERE campaign = 'pg-1'")
    finally:
        server.stop()
        engine.dispose()


def test_no_secret_in_any_response(api):
    # Every read route once more, on everything there is, now that the secrets are set.
    paths = ["/api/v1/campaigns", "/api/v1/devices", "/api/v1/firmwares", "/api/v1/jobs"]
    paths += [f"/api/v1/campaigns/{c['name']}{tail}" for c in api("GET", paths[0])[2] for tail in ("", "/status")]
    paths += [f"/api/v1/devices/{d['name']}" for d in api("GET", paths[1])[2]]
    paths += [f"/api/v1/jobs/{j['id']}" for j in api("GET", paths[3])[2]]
    for path in paths:
        assert api("GET", path)[0] == 200
    secrets = [VARIABLE_VALUE, FIRMWARE_TOKEN, CONFIG_SECRET, api.device_secret, *api.tokens.values()]
    for raw in RESPONSES:  # those of every test of the module that ran, these ones included
        assert not any(secret.encode() in raw for secret in secrets)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
KNOWN = {"now": (bool, False), "devices": (list, None), "values": (dict, None), "size": (int, None)}


@settings(max_examples=120, deadline=None)
@given(st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40)))
def test_any_body_is_options_or_a_400(raw):
    """Whatever a client sends as options or as a wrapped manifest: the values asked
    for, of their types, or an InputError naming the request body, never anything else."""
    from campaignctl.api import manifest, options
    from campaignctl.errors import InputError

    try:
        given_ = options(raw, KNOWN)
    except InputError as exc:
        assert exc.source == "request body"
    else:
        assert given_.keys() == KNOWN.keys()
        assert all(v is None or isinstance(v, KNOWN[k][0]) for k, v in given_.items())
    try:
        text, variables = manifest(raw, "application/json")
    except InputError as exc:
        assert exc.source == "request body"
    else:
        assert isinstance(text, str) and all(isinstance(v, str) for v in variables.values())


def test_approvals_through_the_api_are_the_operators(api):
    assert api("POST", "/api/v1/campaigns", manifest("approved-1", approval={"required": 2}))[0] == 201
    status, _, body = api("POST", "/api/v1/campaigns/approved-1/launch")
    assert status == 409 and "approval" in body["error"]
    status, _, body = api("POST", "/api/v1/campaigns/approved-1/reject", {}, token="bob")
    assert status == 400 and body["field"] == "comment" and "reason" in body["error"]
    status, _, body = api("POST", "/api/v1/campaigns/approved-1/approve", {"comment": "looks good"})
    assert status == 200 and body["approved"] == 1 and body["missing"] == 1
    status, _, body = api("POST", "/api/v1/campaigns/approved-1/approve", None, token="bob")
    assert status == 200 and body["approved"] == 2 and body["missing"] == 0
    assert [v["actor"] for v in body["verdicts"]] == ["alice", "bob"]
    status, _, body = api("POST", "/api/v1/campaigns/approved-1/launch")
    assert status == 200 and body["campaign"] == "approved-1"
    events = api.cli.json("events", "--campaign", "approved-1", "--action", "campaign")["events"]
    assert [(e["actor"], e["action"]) for e in events][:4] == [
        ("alice", "campaign.created"),
        ("alice", "campaign.approved"),
        ("bob", "campaign.approved"),
        ("alice", "campaign.launched"),
    ]
