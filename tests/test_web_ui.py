"""The web front-end (/ui) through a real ``serve``: a real browser (Debian's chromium,
driven by selenium through chromium-driver) for the main flow, a plain HTTP client for
what a browser would not send (cross-site posts).

``CAMPAIGNCTL_SCREENSHOTS=DIR`` makes the browser test save the screenshots of the docs
there (``scripts/screenshots``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

import pytest
from conftest import (
    Broker,
    Cli,
    add_firmware,
    campaignctl_cmd,
    db_dump,
    fleet_yaml,
    free_port,
    http,
    query,
    subprocess_env,
    wait_for_port,
)
from hypothesis import given, settings
from hypothesis import strategies as st

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = os.environ.get("CAMPAIGNCTL_SCREENSHOTS")
# For the docs' screenshots, a fleet that takes a few seconds to converge (late devices).
DEVICES = 40 if SCREENSHOTS else 6
SIMULATE = (
    ["--apply-delay", "1", "--offline-rate", "0.3", "--offline-delay", "6"] if SCREENSHOTS else ["--apply-delay", "0.3"]
)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TOKEN_VALUE = "fw-t0ken-never-shown"


def _fleet(cli: Cli, tmp_path: Path, url: str, prefix: str) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(fleet_yaml(url, prefix, devices=DEVICES))
    cli("devices", "import", str(path))
    add_firmware(
        cli, "2.0", "https://assets.example.com/app-2.0.bin", "--token-env", "APP_TOKEN", env={"APP_TOKEN": TOKEN_VALUE}
    )


def _operator(db_url: str, name: str = "alice") -> str:
    from campaignctl import db, operators

    engine = db.create_engine(db_url)
    try:
        return operators.add(engine, name)
    finally:
        engine.dispose()


@pytest.fixture
def mqtt_fleet(cli: Cli, broker: Broker, prefix: str, tmp_path: Path) -> None:
    _fleet(cli, tmp_path, broker.url, prefix)


@pytest.fixture
def serve_process(db_url: str, mqtt_fleet: None) -> Iterator[tuple[subprocess.Popen, int]]:
    """``campaignctl serve`` started on a free loopback port (the MQTT listeners of the
    fleet's interfaces, the rollout engine), not yet waited for."""
    port = free_port()
    proc = subprocess.Popen(
        campaignctl_cmd("--db", db_url, "serve", "--port", str(port), "--engine-interval", "0.2"),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc, port
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser(tmp_path: Path, serve_process: Any) -> Iterator[Any]:
    """Headless chromium through chromium-driver (started while serve starts); Selenium
    Manager never runs (the driver's path is given) and nothing is downloaded."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def serve(serve_process: tuple[subprocess.Popen, int], browser: Any) -> str:
    """The URL of ``serve``, once it answers."""
    proc, port = serve_process
    wait_for_port(port, "serve", timeout=30, exited=proc.poll)
    return f"http://127.0.0.1:{port}"


def _shot(driver: Any, name: str, most: int = 1250) -> None:
    """A screenshot for the docs, when asked for: the page's height, up to ``most``
    pixels (the window's frame is added to what it shows)."""
    folder = SCREENSHOTS
    if not folder:
        return
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height + 160, 500), most))
    driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    Path(folder).mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(Path(folder) / name))
    driver.set_window_size(1280, 900)


def _wait(driver: Any, condition: Any, timeout: float = 20) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def _text(driver: Any, css: str) -> str:
    """The rendered text of the first element ``css`` selects, read in one script (the
    live region may be replaced between two WebDriver calls)."""
    script = "const e = document.querySelector(arguments[0]); return e ? e.innerText.trim() : '';"
    return str(driver.execute_script(script, css))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])  # the pages call the library: the backends are tested there
def test_an_operator_creates_launches_watches_and_pauses_an_ota_campaign_in_a_browser(
    cli: Cli, db_url: str, serve: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    token = _operator(db_url)
    if SCREENSHOTS:  # another campaign in the list
        manifest = tmp_path / "eco.yaml"
        manifest.write_text("name: eco-lyon\ndevices: {selector: {tags: {site: lyon}}}\nconfigurations: {mode: eco}\n")
        cli("create", "-f", str(manifest))
    simulator = subprocess.Popen(
        campaignctl_cmd("--db", db_url, "simulate", *SIMULATE, "--seed", "3"),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        driver = browser
        # A wrong token is refused, with a clear message; the right one opens the pages.
        driver.get(f"{serve}/ui/")
        driver.find_element(By.ID, "token").send_keys("cco_not-a-token")
        driver.find_element(By.ID, "login").click()
        assert "not valid" in _text(driver, "#login-error")
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.ID, "login").click()
        _wait(driver, lambda d: d.current_url.endswith("/ui/campaigns"))

        # The new-campaign form: a device type, then a firmware from its registry entries.
        driver.find_element(By.ID, "new-campaign").click()
        driver.find_element(By.ID, "name").send_keys("ota-web")
        driver.find_element(By.ID, "description").send_keys("app 2.0 for every sensor")
        Select(driver.find_element(By.ID, "device_type")).select_by_value("sensor-v2")
        _wait(driver, lambda d: _text(d, "#device-count") == f"{DEVICES} matching devices")
        _wait(driver, lambda d: len(Select(d.find_element(By.ID, "firmware")).options) > 1)
        Select(driver.find_element(By.ID, "firmware")).select_by_value("app|2.0")
        keys = _wait(driver, lambda d: "app_url" in _text(d, "#firmware-keys") and _text(d, "#firmware-keys"))
        assert "https://assets.example.com/app-2.0.bin" in keys and "app_token" in keys
        assert TOKEN_VALUE not in driver.page_source
        driver.find_element(By.NAME, "cfg_key").send_keys("report_interval")
        driver.find_element(By.NAME, "cfg_value").send_keys("60")
        driver.find_element(By.ID, "batch_size").send_keys(str(DEVICES))
        driver.find_element(By.ID, "bake_time").send_keys("1m")  # keeps it running once all are valid
        _shot(driver, "new-campaign.png", most=1700)
        driver.find_element(By.ID, "save").click()
        _wait(driver, lambda d: "Draft saved" in _text(d, "#done"))

        # Launch, with a confirmation step; the engine inside serve delivers it.
        driver.find_element(By.ID, "action-launch").click()
        assert _text(driver, "#launch-count") == str(DEVICES)
        driver.find_element(By.ID, "confirm-launch").click()
        _wait(driver, lambda d: "Launched" in _text(d, "#done"))
        driver.execute_script("window.notReloaded = true")

        # The page refreshes its data in place until every device reports the firmware.
        def valid(d: Any) -> int:
            script = "const s = document.getElementById('summary'); return s ? s.dataset.valid : '0';"
            return int(d.execute_script(script))

        if SCREENSHOTS:  # the chart half-way
            _wait(driver, lambda d: valid(d) >= DEVICES * 0.5, timeout=40)
            _shot(driver, "campaign.png")
        _wait(driver, lambda d: valid(d) == DEVICES, timeout=40)
        assert driver.execute_script("return window.notReloaded === true")  # no full reload
        assert re.fullmatch(r"updated \d\d:\d\d:\d\d UTC", _text(driver, "#updated"))
        assert driver.find_element(By.ID, "chart").is_displayed()
        assert _text(driver, "#campaign-status") == "running"
        assert TOKEN_VALUE not in driver.page_source

        # Pause from the page: the CLI sees it.
        driver.find_element(By.ID, "action-pause").click()
        _wait(driver, lambda d: _text(d, "#campaign-status") == "paused")
        assert cli.json("status", "ota-web")["status"] == "paused"

        driver.find_element(By.LINK_TEXT, "sensor-0001").click()
        entries = _text(driver, "#entries")
        assert "campaign ota-web" in entries and "***" in entries and TOKEN_VALUE not in driver.page_source

        driver.get(f"{serve}/ui/campaigns")
        # The list's totals are cached a few seconds: its live refresh (paused) catches up.
        _wait(driver, lambda d: f"{DEVICES} valid" in _text(d, "#campaigns"))
        assert "ota-web" in _text(driver, "#campaigns") and "100% valid" in _text(driver, "#campaigns")
        _shot(driver, "campaigns.png")
    finally:
        simulator.send_signal(signal.SIGINT)
        simulator.wait(15)
    # What the operator did through the pages is theirs in the audit trail.
    actors = query(
        db_url,
        "SELECT action, actor FROM event WHERE campaign = 'ota-web' AND action IN "
        "('campaign.created', 'campaign.launched', 'campaign.paused') ORDER BY id",
    )
    assert actors == [("campaign.created", "alice"), ("campaign.launched", "alice"), ("campaign.paused", "alice")]


def _login(base: str, token: str) -> tuple[str, str]:
    """A session cookie and its CSRF token, as a browser would get them."""
    status, headers, _ = http("POST", f"{base}/ui/login", headers=FORM, body=urlencode({"token": token}))
    assert status == 303
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
    _, _, page = http("GET", f"{base}/ui/campaigns/new", headers={"Cookie": cookie})
    found = re.search(rb'name="csrf" value="([^"]+)"', page)
    assert found
    return cookie, found.group(1).decode()


@pytest.fixture
def ui(db_url: str, tmp_path: Path) -> Iterator[str]:
    """The front-end served in this process (no rollout engine, no MQTT): its URL."""
    from campaignctl import db
    from campaignctl.server import Server

    engine = db.create_engine(db_url)
    server = Server(engine, port=0, listen_mqtt=False, engine_interval=None).start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])  # the pages call the library: the backends are tested there
def test_cross_site_posts_wrong_tokens_and_hostile_text_are_refused_or_escaped(
    cli: Cli, db_url: str, tmp_path: Path, ui: str
) -> None:
    _fleet(cli, tmp_path, "mqtt://127.0.0.1:1", "unused")
    token = _operator(db_url)
    # Not logged in: pages send to the login page, their data is refused.
    status, headers, _ = http("GET", f"{ui}/ui/campaigns")
    assert status == 303 and headers["location"].startswith("/ui/login?next=")
    assert http("GET", f"{ui}/ui/campaigns.json")[0] == 401
    # A wrong token, a device secret or a forged cookie opens nothing.
    for wrong in ("cco_wrong", token[:-2], "a-device-secret"):
        status, _, body = http("POST", f"{ui}/ui/login", headers=FORM, body=urlencode({"token": wrong}))
        assert status == 401 and b"not valid" in body
    assert http("GET", f"{ui}/ui/campaigns", headers={"Cookie": "campaignctl_session=YWxpY2U.1.forged"})[0] == 303

    cookie, csrf = _login(ui, token)
    form = {"name": "x-site", "select": "names", "names": "sensor-0001", "cfg_key": "mode", "cfg_value": "eco"}
    before = db_dump(db_url)
    for headers, fields in (
        (
            {"Cookie": cookie, "Origin": "http://evil.example"},
            {**form, "csrf": csrf},
        ),  # another site, even with the token
        ({"Cookie": cookie}, form),  # no CSRF token
        ({"Cookie": cookie}, {**form, "csrf": "forged"}),
        ({"Cookie": cookie, "Origin": "null"}, {**form, "csrf": csrf}),
    ):
        status, _, body = http("POST", f"{ui}/ui/campaigns/new", headers={**FORM, **headers}, body=urlencode(fields))
        assert status == 403 and b"refused" in body
    assert db_dump(db_url) == before

    # A bad manifest is shown next to the form, and nothing is saved.
    bad = {**form, "csrf": csrf, "batch_size": "zero"}
    status, _, body = http("POST", f"{ui}/ui/campaigns/new", headers={**FORM, "Cookie": cookie}, body=urlencode(bad))
    assert status == 400 and b"rollout.batch_size" in body and b'value="x-site"' in body
    assert db_dump(db_url) == before

    # Text a user or a device wrote is escaped wherever it is shown; secrets never are.
    hostile = '<img src=x onerror="alert(1)">'
    fields = {**form, "csrf": csrf, "description": hostile, "exp_key": "note", "exp_value": hostile}
    status, headers, _ = http(
        "POST", f"{ui}/ui/campaigns/new", headers={**FORM, "Cookie": cookie}, body=urlencode(fields)
    )
    assert status == 303 and headers["location"] == "/ui/campaigns/x-site?done=created"
    cli("devices", "report", "sensor-0001", f"note={hostile}")
    pages = ["/ui/campaigns", "/ui/campaigns/x-site", "/ui/devices/sensor-0001", "/ui/firmwares", "/ui/campaigns.json"]
    pages += ["/ui/campaigns/x-site/live.json", "/ui/form/firmwares?device_type=sensor-v2", "/ui/campaigns/new"]
    for path in pages:
        status, _, body = http("GET", f"{ui}{path}", headers={"Cookie": cookie})
        assert status == 200, path
        text = json.loads(body).get("html", "") if path.endswith(".json") else body.decode()
        assert "<img" not in text and TOKEN_VALUE not in body.decode(), path
    assert "&lt;img src=x" in http("GET", f"{ui}/ui/devices/sensor-0001", headers={"Cookie": cookie})[2].decode()
    # A draft is edited with the same form (as apply would), until it is launched.
    status, _, body = http("GET", f"{ui}/ui/campaigns/x-site/edit", headers={"Cookie": cookie})
    assert status == 200 and b'value="eco"' in body and b"readonly" in body
    fields = {**fields, "cfg_value": "60", "exp_key": "", "exp_value": ""}
    status, headers, _ = http(
        "POST", f"{ui}/ui/campaigns/x-site/edit", headers={**FORM, "Cookie": cookie}, body=urlencode(fields)
    )
    assert status == 303 and headers["location"] == "/ui/campaigns/x-site?done=updated"
    shown = cli.json("show", "x-site")
    assert shown["configurations"] == {"mode": 60} and shown["expected_state"] == {}
    # Logging out ends the session in the browser; a revoked operator's session ends too.
    status, headers, _ = http(
        "POST", f"{ui}/ui/logout", headers={**FORM, "Cookie": cookie}, body=urlencode({"csrf": csrf})
    )
    assert status == 303 and 'campaignctl_session=""' in headers["set-cookie"]
    from campaignctl import db, operators

    engine = db.create_engine(db_url)
    operators.revoke(engine, "alice")
    engine.dispose()
    assert http("GET", f"{ui}/ui/campaigns", headers={"Cookie": cookie})[0] == 303


def test_the_convergence_chart_and_the_device_pages_agree_with_status(cli: Cli, db_url: str, fleet: Path) -> None:
    """The chart's one grouped query and the device table's pages, on both backends."""
    from datetime import datetime, timezone

    from campaignctl import db, summaries
    from campaignctl.supervision import campaign_status
    from campaignctl.web import chart, views

    manifest = fleet.parent / "eco.yaml"
    manifest.write_text(
        "name: eco\ndevices: {selector: {type: sensor-v2}}\nconfigurations: {mode: eco}\nexpected_state: {mode: eco}\n"
    )
    cli("create", "-f", str(manifest))
    cli("launch", "eco")  # delivered to the broker: every device is waiting
    cli("devices", "report", "sensor-0001", "mode=eco")
    cli("devices", "report", "sensor-0003", "mode=eco")
    cli("devices", "report", "sensor-0004", "mode=off")
    engine = db.create_engine(db_url)
    try:
        status = campaign_status(engine, "eco")
        assert (status["summary"]["valid"], status["summary"]["waiting"]) == (2, 2)
        with db.read(engine) as conn:
            drawn = chart.convergence(conn, status["job"]["id"], status["job"]["created_at"], 4)
        assert drawn.times[0] <= drawn.times[-1] <= datetime.now(timezone.utc)
        assert {name: counts[0] for name, counts in drawn.counts.items()} == {
            "valid": 0,
            "waiting": 0,
            "failed": 0,
            "undelivered": 4,
        }
        assert {name: counts[-1] for name, counts in drawn.counts.items()} == {
            "valid": 2,
            "waiting": 2,
            "failed": 0,
            "undelivered": 0,
        }
        # Pages read from their offset, with or without a filter; a search matches part of a name.
        assert [d["device"] for d in campaign_status(engine, "eco", limit=2, offset=2)["devices"]] == [
            "sensor-0003",
            "sensor-0004",
        ]
        waiting = campaign_status(engine, "eco", only={"waiting"}, limit=5, offset=1)["devices"]
        assert [d["device"] for d in waiting] == ["sensor-0004"]
        page = views.campaign(engine, "eco", {"status": "", "q": "0003", "page": 1})
        assert [d["device"] for d in page["devices"]] == ["sensor-0003"] and not page["more"]
        searched = {
            q: len(views.campaign(engine, "eco", {"status": "", "q": q, "page": 1})["devices"])
            for q in ("SENSOR-000", "_", "%", "0!")
        }
        assert searched == {"SENSOR-000": 4, "_": 0, "%": 0, "0!": 0}  # any case; LIKE's wildcards are text
        filtered = views.campaign(engine, "eco", {"status": "waiting", "q": "sensor", "page": 1})["devices"]
        assert [d["device"] for d in filtered] == ["sensor-0002", "sensor-0004"]
        assert page["chart"] is not None and len(page["chart"]["areas"]) == 4
        # The campaign list shows the supervision totals of the campaign page.
        (listed,) = views.campaigns(engine)["campaigns"]
        assert {k: v for k, v in listed["summary"].items() if v} == {"total": 4, "valid": 2, "waiting": 2}
        assert [(s["state"], s["count"]) for s in listed["bar"]] == [("valid", 2), ("waiting", 2)]
        # Cached per job while the campaign is active; counted afresh once it is not.
        job = status["job"]["id"]
        cached, fresh = summaries.Summaries(ttl=3600), summaries.Summaries(ttl=0)
        assert cached.totals(engine, {job: "running"})[job]["valid"] == 2
        cli("devices", "report", "sensor-0004", "mode=eco")
        assert cached.totals(engine, {job: "paused"})[job]["valid"] == 2
        assert fresh.totals(engine, {job: "running"})[job]["valid"] == 3
        assert cached.totals(engine, {job: "completed"})[job]["valid"] == 3
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])  # checked before any query: the backends do not matter
def test_hostile_cookies_forms_and_urls_are_refused_and_a_scheduled_campaign_has_no_pause(
    cli: Cli, db_url: str, tmp_path: Path, ui: str
) -> None:
    """What a browser (or anyone) sends is a refusal or a message on the form, never a 500."""
    import time

    _fleet(cli, tmp_path, "mqtt://127.0.0.1:1", "unused")
    cookie, csrf = _login(ui, _operator(db_url))
    now = int(time.time())
    # Cookies: a digit int() refuses, a MAC that is not ASCII, a time too long for a float, a NUL name.
    for forged in (f"YWxpY2U.{now}²", f"YWxpY2U.{now}.é", "YWxpY2U." + "9" * 900 + ".x", f"YQBi.{now}.x"):
        status, headers, _ = http("GET", f"{ui}/ui/campaigns", headers={"Cookie": f"campaignctl_session={forged}"})
        assert status == 303 and headers["location"].startswith("/ui/login"), forged
    form = {"name": "hostile", "select": "names", "names": "sensor-0001", "cfg_key": "mode", "cfg_value": "eco"}
    before = db_dump(db_url)
    status, _, body = http(
        "POST", f"{ui}/ui/campaigns/new", headers={**FORM, "Cookie": cookie}, body=urlencode({**form, "csrf": "é"})
    )
    assert status == 403 and b"security token" in body
    for field, value in (("batches", "²"), ("batch_size", "9" * 5000), ("batches", "1, " + "9" * 30)):
        fields = {**form, "csrf": csrf, field: value}
        status, _, body = http(
            "POST", f"{ui}/ui/campaigns/new", headers={**FORM, "Cookie": cookie}, body=urlencode(fields)
        )
        assert status == 400 and f"rollout.{field}".encode() in body, (field, value)
    assert db_dump(db_url) == before
    fields = {**form, "csrf": csrf, "cfg_value": "[" * 5000}  # too deep to read as JSON: the text typed
    status, _, body = http("POST", f"{ui}/ui/campaigns/new", headers={**FORM, "Cookie": cookie}, body=urlencode(fields))
    assert status == 303 and cli.json("show", "hostile")["configurations"] == {"mode": "[" * 5000}
    # NUL, which no name holds and PostgreSQL cannot store, in a path or a query: a 400, as on /api/v1.
    for path in (
        "/ui/campaigns/a%00b",
        "/ui/devices/a%00b",
        "/ui/form/count?names=a%00b",
        "/ui/form/firmwares?device_type=a%00b",
        "/ui/campaigns/a%00b/live.json",
    ):
        status, _, body = http("GET", f"{ui}{path}", headers={"Cookie": cookie})
        assert status == 400 and json.loads(body)["field"] == "url", path
    # A page number past any table (its offset beyond 64 bits) is the first page.
    cli(
        "create",
        "-f",
        str(
            _write(
                tmp_path, "draft.yaml", "name: draft\ndevices: {names: [sensor-0001]}\nconfigurations: {mode: eco}\n"
            )
        ),
    )
    for path in ("/ui/campaigns/draft?page=1152921504606846976", "/ui/campaigns?page=99999999999999999999"):
        assert http("GET", f"{ui}{path}", headers={"Cookie": cookie})[0] == 200, path
    # ``pause`` takes a running campaign only (CLI, API and web alike): no button that always fails.
    text = (
        "name: later\ndevices: {names: [sensor-0001]}\nconfigurations: {mode: eco}\nstart_at: '2999-01-01T00:00:00Z'\n"
    )
    cli("create", "-f", str(_write(tmp_path, "later.yaml", text)))
    cli("launch", "later")
    body = http("GET", f"{ui}/ui/campaigns/later", headers={"Cookie": cookie})[2]
    assert b'id="campaign-status">scheduled' in body
    assert b'id="action-cancel"' in body and b'id="action-pause"' not in body
    assert "only a running campaign" in cli("pause", "later", code=1).stderr
    _any_cookie_or_csrf_text_is_no_session(db_url)


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("backend", ["sqlite"])
def test_behind_a_tls_proxy_the_public_url_decides_the_origin_and_the_secure_cookie(
    cli: Cli, db_url: str, tmp_path: Path
) -> None:
    from campaignctl import db
    from campaignctl.server import Server

    public = "https://campaigns.example.com"
    token = _operator(db_url)
    engine = db.create_engine(db_url)
    server = Server(engine, port=0, listen_mqtt=False, engine_interval=None, public_url=public).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        # nginx's proxy_pass sends the upstream's Host; the browser's Origin is the public URL.
        status, headers, _ = http(
            "POST", f"{base}/ui/login", headers={**FORM, "Origin": public}, body=urlencode({"token": token})
        )
        assert status == 303 and "Secure" in headers["set-cookie"]
        status, _, body = http(
            "POST", f"{base}/ui/login", headers={**FORM, "Origin": base}, body=urlencode({"token": token})
        )
        assert status == 403 and b"another site" in body
    finally:
        server.stop()
        engine.dispose()
    from campaignctl.web.sessions import same_origin

    assert same_origin("http://h:1", None, "h:1") and not same_origin("http://h:1", None, "h:1", public)
    assert "--public-url" in cli("serve", "--public-url", "ftp://x", code=1).stderr


_PART = st.text(max_size=12) | st.from_regex(r"[0-9²³]{0,30}", fullmatch=True)


def _any_cookie_or_csrf_text_is_no_session(db_url: str) -> None:
    """Sessions.operator and csrf_ok on any text: no session, never an exception."""
    from campaignctl import db
    from campaignctl.web.sessions import Sessions

    engine = db.create_engine(db_url)
    sessions = Sessions(engine)

    @settings(max_examples=100, deadline=None)
    @given(parts=st.lists(_PART, min_size=1, max_size=4), csrf=st.text(max_size=40))
    def check(parts: list[str], csrf: str) -> None:
        cookie = ".".join(parts)
        assert sessions.operator(cookie) is None
        assert sessions.csrf_ok(cookie, csrf) is (csrf == sessions.csrf(cookie))

    try:
        check()
        genuine = sessions.issue("alice")
        assert sessions.operator(genuine) == "alice" and sessions.csrf_ok(genuine, sessions.csrf(genuine))
    finally:
        engine.dispose()


@settings(max_examples=100, deadline=None)
@given(
    field=st.sampled_from(["batches", "batch_size", "bake_time", "success_threshold", "cfg_value", "tags"]),
    text=st.text(max_size=30) | st.from_regex(r"[0-9²\[{\" ,%]{0,60}", fullmatch=True),
)
def test_any_form_text_is_a_manifest_or_an_input_error(field: str, text: str) -> None:
    """The form's fields become a manifest, which the manifest's validation judges:
    bad input is an InputError (shown on the form), never another exception."""
    from campaignctl.errors import InputError
    from campaignctl.manifests import parse_campaign
    from campaignctl.web.forms import CampaignForm

    fields = {"name": ["f"], "select": ["names"], "names": ["d-1"], "cfg_key": ["k"], "cfg_value": ["v"], field: [text]}
    try:
        parse_campaign(json.dumps(CampaignForm.from_fields(fields).manifest()), source="form", environ={})
    except InputError:
        pass
