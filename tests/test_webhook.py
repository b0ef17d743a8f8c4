"""The webhook interface against a real local HTTP server that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict

import pytest
from conftest import free_port, write
from hypothesis import given, settings
from hypothesis import strategies as st

#: Retry-After values a platform may send that are neither seconds nor an HTTP date.
ODD_RETRY_AFTER = ["²", "٣", "1.5", "-1", "Sun, 99 Foo 2026", "Tue, 01 Dec 9999999 00:00:00 GMT"]


class MisbehavingApi:
    """An aiohttp server on 127.0.0.1 whose answer depends on the device in the URL:

    ok-*     200 at once            flaky-*  503 twice, then 200
    busy-*   429 Retry-After: 1, then 200
    gone-*   404                    bad-*    400 with a body
    slow-*   first request hangs past the client's timeout, then 200
    down-*   500 always               lag-*    200 after 50 ms
    echo-*   400 with the request body echoed back
    gate-*   200 once ``gate`` is set
    odd-*    503 with a Retry-After that is neither seconds nor a date, then 200
    endless-*  400 with a body that never ends
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: dict[str, list[dict]] = defaultdict(list)
        self.gate = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request):
        from aiohttp import web

        device = request.match_info["device"]
        seen = self.requests[device]
        seen.append(
            {
                "at": time.monotonic(),
                "method": request.method,
                "headers": dict(request.headers),
                "body": await request.json(),
            }
        )
        kind, n = device.split("-")[0], len(seen)
        if kind == "flaky" and n <= 2:
            return web.Response(status=503, text="try later")
        if kind == "busy" and n == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        if kind == "gone":
            return web.Response(status=404, text="no such thing")
        if kind == "bad":
            return web.Response(status=400, text="unknown thing")
        if kind == "slow" and n == 1:
            await asyncio.sleep(3)
        if kind == "down":
            return web.Response(status=500, text="boom")
        if kind == "echo":
            return web.Response(status=400, text="invalid document: " + json.dumps(seen[-1]["body"]))
        if kind == "lag":
            await asyncio.sleep(0.05)
        if kind == "odd" and n <= len(ODD_RETRY_AFTER):
            return web.Response(status=503, headers={"Retry-After": ODD_RETRY_AFTER[n - 1]})
        if kind == "endless":
            return await self._endless(request)
        while kind == "gate" and not self.gate.is_set():
            await asyncio.sleep(0.02)
        return web.json_response({"accepted": True})

    @staticmethod
    async def _endless(request):
        from aiohttp import web

        response = web.StreamResponse(status=400)
        await response.prepare(request)
        try:
            while True:
                await response.write(b"x" * 65536)
        except (ConnectionError, asyncio.CancelledError):  # the client gave up reading: as it should
            return response

    def _run(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/things/{device}/desired", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()

    def start(self) -> "MisbehavingApi":
        self._thread.start()
        assert self._started.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def api():
    server = MisbehavingApi().start()
    yield server
    server.stop()


def _fleet(
    tmp_path,
    port: int,
    names: list[str],
    headers: str = "{Authorization: THINGS_TOKEN}",
    timeout: float = 0.5,
    concurrency: int = 64,
) -> str:
    devices = "\n".join(f"  - {{name: {n}, type: thing, interface: things}}" for n in names)
    return write(
        tmp_path,
        "fleet.yaml",
        f"""\
interfaces:
  things:
    type: webhook
    url: http://127.0.0.1:{port}/things/{{device}}/desired
    method: PUT
    headers: {headers}
    timeout: {timeout}
    concurrency: {concurrency}
device_types:
  thing: {{}}
devices:
{devices}
""",
    )


def test_retry_classes_and_retry_after(cli, api, tmp_path):
    names = ["ok-1", "flaky-1", "busy-1", "gone-1", "bad-1", "slow-1", "down-1"]
    cli("devices", "import", _fleet(tmp_path, api.port, names))
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
        name: push
        devices: {selector: {type: thing}}
        configurations: {mode: eco}
        expected_state: {mode: eco}
        """,
        ),
    )
    env = {"THINGS_TOKEN": "Bearer api-5ecret"}
    result = cli("launch", "push", "--attempts", "4", "--backoff", "0.1", "--max-backoff", "0.2", env=env, code=1)
    assert "3 device(s) could not be delivered" in result.stderr
    job = cli.json("jobs", "show", "1")
    assert job["counts"] == {
        "pending": 0,
        "syncing": 0,
        "delivered": 4,
        "failed": 3,
        "cancelled": 0,
        "installed": 0,
        "skipped": 0,
        "superseded": 0,
    }
    errors = {e["device"]: e for e in job["errors"]}
    # Other 4xx fail at once, with the status in the reason.
    assert errors["gone-1"]["attempts"] == 1 and errors["gone-1"]["error"] == "HTTP 404 Not Found"
    assert errors["bad-1"]["attempts"] == 1 and errors["bad-1"]["error"].startswith("HTTP 400 Bad Request")
    # 5xx is retried until the attempts run out.
    assert errors["down-1"]["attempts"] == 4 and errors["down-1"]["error"] == "HTTP 500 Internal Server Error"
    assert len(api.requests["down-1"]) == 4 and len(api.requests["gone-1"]) == 1
    # Retried, then delivered: 503s, a timeout, a 429.
    assert len(api.requests["flaky-1"]) == 3 and len(api.requests["slow-1"]) == 2
    busy = api.requests["busy-1"]
    assert len(busy) == 2 and busy[1]["at"] - busy[0]["at"] >= 0.95  # Retry-After: 1 beats the 0.1 s backoff
    # What the platform received: the document, with the header from the environment.
    first = api.requests["ok-1"][0]
    assert first["method"] == "PUT" and first["headers"]["Authorization"] == "Bearer api-5ecret"
    assert first["body"]["configuration"] == {"mode": "eco"} and first["body"]["version"] > 0
    supervision = {d["device"]: d for d in cli.json("status", "push")["devices"]}
    assert supervision["gone-1"]["status"] == "failed" and "404" in supervision["gone-1"]["reason"]
    assert supervision["flaky-1"]["status"] == "waiting"
    assert "api-5ecret" not in json.dumps(cli.json("show", "push")) + json.dumps(job)


def test_missing_header_variable_fails_every_device_clearly(cli, api, tmp_path):
    cli("devices", "import", _fleet(tmp_path, api.port, ["ok-1", "ok-2"]))
    cli("create", "-f", write(tmp_path, "c.yaml", "name: p\ndevices: {names: [ok-1, ok-2]}\nconfigurations: {a: 1}\n"))
    cli("launch", "p", env={"THINGS_TOKEN": ""}, code=0)  # set, even empty: sent as is
    cli("create", "-f", write(tmp_path, "d.yaml", "name: q\ndevices: {names: [ok-1, ok-2]}\nconfigurations: {a: 2}\n"))
    import os

    os.environ.pop("THINGS_TOKEN", None)
    cli("launch", "q", code=1)
    errors = cli.json("jobs", "show", "2")["errors"]
    assert [e["error"] for e in errors] == [
        "environment variable THINGS_TOKEN (header Authorization of interface things) is not set"
    ] * 2
    assert len(api.requests["ok-1"]) == 1  # only the first campaign reached the platform


def test_deliveries_run_concurrently(cli, api, tmp_path):
    names = [f"slow-{i}" for i in range(20)]
    cli("devices", "import", _fleet(tmp_path, api.port, names, headers="{}"))
    cli(
        "create",
        "-f",
        write(tmp_path, "c.yaml", "name: many\ndevices: {selector: {type: thing}}\nconfigurations: {a: 1}\n"),
    )
    started = time.monotonic()
    cli("launch", "many", "--attempts", "2", "--backoff", "0.1")
    # Each device's first request hangs until the 0.5 s timeout: sequentially that is 10 s.
    assert time.monotonic() - started < 4
    assert all(len(api.requests[n]) == 2 for n in names)


def test_bad_webhook_settings(cli, tmp_path, db_url):
    from conftest import db_dump

    cli("devices", "list")  # the database exists (SQLite: created on first use)
    before = db_dump(db_url)
    bad = write(tmp_path, "f.yaml", "interfaces:\n  w: {type: webhook, url: 'https://api.example.com/things'}\n")
    assert "interfaces.w.url: url must contain {device}" in cli("devices", "import", bad, code=1).stderr
    bad = write(
        tmp_path,
        "g.yaml",
        "interfaces:\n  w:\n    type: webhook\n    url: 'https://x/{device}'\n"
        "    headers: {Authorization: 'Bearer abc'}\n",
    )
    assert "is not an environment variable name" in cli("devices", "import", bad, code=1).stderr
    assert db_dump(db_url) == before


def test_an_echoed_request_does_not_leak_the_document_into_errors(cli, api, tmp_path):
    cli("devices", "import", _fleet(tmp_path, api.port, ["echo-1"], headers="{}"))
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            "name: e\ndevices: {names: [echo-1]}\nconfigurations: {app_token: '${TOKEN}', mode: eco}\n",
        ),
        env={"TOKEN": "tok-5ecret-value"},
    )
    cli("launch", "e", code=1)
    [error] = cli.json("jobs", "show", "1")["errors"]
    assert error["error"] == "HTTP 400 Bad Request"  # never the platform's body
    assert "tok-5ecret-value" not in cli("status", "e").stdout


def _launch_in_background(db_url, name: str):
    """Launch a campaign and run its job in a thread; returns (engine, thread)."""
    from campaignctl import db, jobs
    from campaignctl import engine as rollout

    engine = db.create_engine(db_url)
    job_id, owner = jobs.launch(engine, name)
    runner = threading.Thread(target=rollout.advance, args=(engine, job_id, owner))
    runner.start()
    return engine, runner


def test_a_newer_document_is_not_replaced_by_the_job_s_older_one(cli, api, tmp_path, db_url):
    """The job reads documents in chunks and sends them over time: a user's change made
    meanwhile must be what the platform holds in the end."""
    from campaignctl import fleet

    names = [f"lag-{i:03d}" for i in range(60)]
    cli("devices", "import", _fleet(tmp_path, api.port, names, headers="{}", timeout=2, concurrency=1))
    cli(
        "create",
        "-f",
        write(tmp_path, "c.yaml", "name: slow\ndevices: {selector: {type: thing}}\nconfigurations: {mode: eco}\n"),
    )
    engine, runner = _launch_in_background(db_url, "slow")
    time.sleep(0.6)  # the job has read every document; it has sent about ten
    newer = fleet.set_config(engine, "lag-050", {"mode": "boost"})
    runner.join(30)
    assert newer.delivered
    last = api.requests["lag-050"][-1]["body"]
    assert last == {"configuration": {"mode": "boost"}, "version": newer.version}
    assert cli.json("jobs", "show", "1")["status"] == "success"


def test_cancel_stops_a_webhook_delivery_and_records_what_was_in_flight(cli, api, tmp_path, db_url):
    from campaignctl import control as rollout

    names = [f"lag-{i:03d}" for i in range(200)]
    cli("devices", "import", _fleet(tmp_path, api.port, names, headers="{}", timeout=2, concurrency=2))
    cli(
        "create",
        "-f",
        write(tmp_path, "c.yaml", "name: big\ndevices: {selector: {type: thing}}\nconfigurations: {mode: eco}\n"),
    )
    engine, runner = _launch_in_background(db_url, "big")
    time.sleep(0.5)
    rollout.cancel(engine, "big")
    runner.join(30)
    reached = {name for name, requests in api.requests.items() if requests}
    counts = cli.json("jobs", "show", "1")["counts"]
    assert 0 < len(reached) < 200
    assert counts["delivered"] == len(reached) and counts["cancelled"] == 200 - len(reached)
    time.sleep(0.3)
    assert {name for name, requests in api.requests.items() if requests} == reached  # nothing after the stop


@pytest.mark.parametrize("backend", ["sqlite"])  # what the platform answers does not depend on it
def test_odd_retry_after_values_are_ignored_and_endless_bodies_not_read(cli, api, tmp_path):
    """A Retry-After that is not ASCII seconds or a date is ignored (the backoff applies),
    and the body of an answer is never read past a few KiB."""
    cli("devices", "import", _fleet(tmp_path, api.port, ["odd-1", "endless-1"], headers="{}", timeout=5))
    cli(
        "create",
        "-f",
        write(tmp_path, "c.yaml", "name: o\ndevices: {selector: {type: thing}}\nconfigurations: {a: 1}\n"),
    )
    started = time.monotonic()
    cli(
        "launch", "o", "--attempts", str(len(ODD_RETRY_AFTER) + 1), "--backoff", "0.01", "--max-backoff", "0.02", code=1
    )
    assert time.monotonic() - started < 4  # the endless body was not waited for until the 5 s timeout
    job = cli.json("jobs", "show", "1")
    assert job["counts"]["delivered"] == 1 and len(api.requests["odd-1"]) == len(ODD_RETRY_AFTER) + 1
    assert job["errors"] == [
        {**job["errors"][0], "device": "endless-1", "error": "HTTP 400 Bad Request", "attempts": 1}
    ]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.from_regex(r"[ \t]*[0-9]{1,400}[ \t]*", fullmatch=True))
def test_retry_after_is_seconds_a_date_or_ignored(value):
    from campaignctl.interfaces.webhook import MAX_RETRY_AFTER, retry_after_seconds

    seconds = retry_after_seconds(value)
    assert seconds is None or 0 <= seconds <= MAX_RETRY_AFTER
    if value.strip().isascii() and value.strip().isdigit():
        assert seconds == min(int(value.strip()), MAX_RETRY_AFTER)
