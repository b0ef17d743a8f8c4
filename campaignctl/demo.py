"""``campaignctl demo``: a real OTA campaign against a simulated fleet, start to finish.

Everything is real but temporary: a database in a temporary directory, the HTTP device
API (or an MQTT broker given with --mqtt) on loopback, a few hundred simulated devices
speaking the protocol, a firmware in the registry and the OTA campaign from
examples/demo-ota.yaml. Nothing is left running or written when it ends.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from campaignctl import db

OLD, NEW = "5.1.8", "5.1.9_beta01"
SITES = ("lyon", "paris", "nice", "lille")


def examples_dir() -> Path:
    """examples/ as installed with the package, or in a source checkout."""
    try:
        from importlib.resources import files

        return Path(str(files("campaignctl.examples")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "examples"


def _fleet_manifest(devices: int, interface: str) -> str:
    lines = [
        interface,
        "device_types:",
        "  sensor-v2:",
        "    firmware_types:",
        "      app: {version_key: app_version, url_key: app_url, token_key: app_token}",
        "devices:",
    ]
    canaries = max(1, devices // 20)
    for i in range(1, devices + 1):
        lines.append(
            f"  - {{name: sensor-{i:04d}, type: sensor-v2, interface: fleet, "
            f"tags: {{site: {SITES[i % len(SITES)]}, ring: {'canary' if i <= canaries else 'main'}}}}}"
        )
    return "\n".join(lines) + "\n"


class Demo:
    def __init__(
        self,
        devices: int = 300,
        mqtt: str | None = None,
        *,
        seed: int = 7,
        timeout: float = 45.0,
        live: bool | None = None,
        out: Callable[[Any], None] | None = None,
    ) -> None:
        self.devices, self.mqtt, self.seed, self.timeout = devices, mqtt, seed, timeout
        self.live = live
        self.out = out or print
        self.prefix = f"campaignctl-demo-{uuid.uuid4().hex[:8]}"

    def run(self) -> dict[str, Any]:
        workdir = Path(tempfile.mkdtemp(prefix="campaignctl-demo-"))
        # The device secrets' key goes with the temporary database, whatever the
        # environment says: nothing of the demo may outlive it.
        saved_key = os.environ.get("CAMPAIGNCTL_KEY_FILE")
        os.environ["CAMPAIGNCTL_KEY_FILE"] = str(workdir / "demo.db.key")
        engine = db.create_engine(workdir / "demo.db")
        server = None
        try:
            from campaignctl.server import Server

            server = Server(engine, port=0, listen_mqtt=False).start()
            return self._scenario(engine, workdir, server)
        finally:
            if server is not None:
                server.stop()
            if self.mqtt:
                self._clear_retained(engine)
            engine.dispose()
            shutil.rmtree(workdir, ignore_errors=True)
            if saved_key is None:
                os.environ.pop("CAMPAIGNCTL_KEY_FILE", None)
            else:
                os.environ["CAMPAIGNCTL_KEY_FILE"] = saved_key
            os.environ.pop("CAMPAIGNCTL_DEMO_TOKEN", None)

    def _say(self, text: str) -> None:
        self.out(text)

    def _scenario(self, engine: Any, workdir: Path, server: Any) -> dict[str, Any]:
        from campaignctl import campaigns, firmwares, fleet, jobs, store
        from campaignctl.manifests import load_campaign
        from campaignctl.simulator import Options, Simulator

        if self.mqtt:
            interface = f"interfaces:\n  fleet: {{type: mqtt, url: '{self.mqtt}', topic_prefix: {self.prefix}}}"
        else:
            interface = f"interfaces:\n  fleet: {{type: http, url: 'http://127.0.0.1:{server.port}'}}"
        (workdir / "fleet.yaml").write_text(_fleet_manifest(self.devices, interface))
        result = fleet.import_fleet(engine, str(workdir / "fleet.yaml"))
        if self.mqtt:
            server.start_listeners()  # the devices' state comes back over the broker
        where = f"MQTT broker {self.mqtt}" if self.mqtt else f"the HTTP device API on 127.0.0.1:{server.port}"
        self._say(f"1. fleet: {result.devices.created} simulated sensor-v2 devices on {where}, all running app {OLD}")
        with db.write(engine) as conn:
            now = db.utcnow()
            ids = [r[0] for r in db.run(conn, "SELECT id FROM device ORDER BY id")]
            store.write_reported(conn, [(i, "app_version", f'"{OLD}"', now) for i in ids])

        os.environ["CAMPAIGNCTL_DEMO_TOKEN"] = secrets.token_urlsafe(24)
        for version in (OLD, NEW):
            firmwares.add(
                engine,
                device_type="sensor-v2",
                firmware_type="app",
                version=version,
                url=f"https://assets.example.com/app/{version}.bin",
                token_env="CAMPAIGNCTL_DEMO_TOKEN",
                sha256=secrets.token_hex(32),
                size=1_843_200,
                description=f"app {version}",
            )
        self._say(f"2. firmware registry: app {OLD} and {NEW} for sensor-v2 (download token kept secret: ***)")

        manifest = examples_dir() / "demo-ota.yaml"
        spec = load_campaign(str(manifest))
        campaigns.create(engine, spec)
        self._say(f"3. campaign {spec.name!r} created from examples/{manifest.name}")

        options = Options(
            apply_delay=1.5, fail_rate=0.03, offline_rate=0.05, offline_delay=15.0, seed=self.seed, poll_interval=1.0
        )
        simulator = Simulator(engine, options)
        late = sum(1 for d in simulator.devices if d.online_after)
        failing = sum(1 for d in simulator.devices if d.fails)
        stop = asyncio.Event()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=lambda: loop.run_until_complete(simulator.run(stop)), daemon=True)
        thread.start()
        self._say(f"4. {self.devices} devices online ({late} will come online late, {failing} will fail to install)")

        from campaignctl.cli.common import progress_bar
        from campaignctl.engine import advance

        job_id, owner = jobs.launch(engine, spec.name)
        assert job_id is not None and owner is not None  # the demo's campaign has no start_at
        self._say(f"5. launch: job {job_id} writes the configuration of every device, then delivers it")
        with progress_bar(self.live) as progress:
            advance(engine, job_id, owner, progress=progress)
        counts = jobs.show(engine, job_id)["counts"]
        if self.mqtt:
            self._say(f"   {counts['delivered']} retained documents acknowledged by the broker")
        else:
            self._say(f"   {counts['syncing']} documents waiting for their devices to fetch them")
        self._say("6. supervision, live, until the fleet settles:")
        try:
            final = self._watch(engine, spec.name, expected_stuck=failing)
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(15)
        self._explain(final, failing)
        return final

    def _watch(self, engine: Any, name: str, expected_stuck: int) -> dict[str, Any]:
        from campaignctl.supervision import campaign_status

        deadline = time.monotonic() + self.timeout
        live = self.live if self.live is not None else sys.stdout.isatty()
        last: tuple | None = None
        steady_since = time.monotonic()
        view: Any = None
        if live:
            from rich.live import Live

            from campaignctl.cli.common import stdout_console

            view = Live(console=stdout_console(), auto_refresh=False)
            view.start()
        try:
            while True:
                data = campaign_status(engine, name)
                s = data["summary"]
                key = tuple(s.values())
                if key != last:
                    last, steady_since = key, time.monotonic()
                    if view is None:
                        self._say(f"   {_summary_line(s)}")
                if view is not None:
                    from campaignctl.cli.campaigns import status_view

                    # The devices still converging first: they are the interesting ones.
                    shown = dict(data, devices=sorted(data["devices"], key=lambda d: d["status"] == "valid"))
                    view.update(status_view(shown, None, 10), refresh=True)
                settled = s["valid"] + s["failed"] + s["invalid"] + expected_stuck >= s["total"]
                if (settled and time.monotonic() - steady_since > 3) or time.monotonic() > deadline:
                    return data
                time.sleep(0.5)
        finally:
            if view is not None:
                view.stop()

    def _explain(self, data: dict[str, Any], failing: int) -> None:
        s = data["summary"]
        self._say(f"7. result: {_summary_line(s)}")
        stuck = [d for d in data["devices"] if d["status"] != "valid"]
        for device in stuck[:8]:
            self._say(f"   {device['device']}: {device['status']} — {device['reason']}")
        if len(stuck) > 8:
            self._say(f"   … and {len(stuck) - 8} more")
        if s["waiting"]:
            self._say(
                f"   waiting: these devices got the document but still report app {OLD}. {failing} devices of "
                "this fleet were set to fail their install: they keep the old version and report last_error "
                "(on a real fleet, campaignctl devices show NAME tells what they report). A campaign never "
                "marks them valid by itself."
            )
        if s["syncing"]:
            self._say(
                "   syncing: these devices were offline and have not fetched their document yet; they get "
                "it when they come back (next poll, or the retained MQTT message)."
            )
        self._say("The demo's database, devices and servers are gone; run it again with --devices or --mqtt.")

    def _clear_retained(self, engine: Any) -> None:
        """Leave the user's broker as it was: empty retained payloads delete retained messages."""
        from campaignctl.interfaces.mqtt import Settings, connect, new_client

        try:
            settings = Settings(url=self.mqtt or "", topic_prefix=self.prefix)
            client = new_client("demo", settings, purpose="cleanup")
            connect(client, settings, timeout=5)
            for i in range(1, self.devices + 1):
                for suffix in ("config", "state"):
                    client.publish(f"{self.prefix}/sensor-{i:04d}/{suffix}", b"", qos=0, retain=True)
            client.loop(0.5)
            client.disconnect()
        except Exception:  # noqa: BLE001 - best effort: the demo's topics are under their own prefix
            pass


def _summary_line(s: dict[str, int]) -> str:
    order = ("valid", "waiting", "syncing", "pending", "invalid", "failed", "timed_out", "cancelled")
    return f"{s['total']} devices: " + ", ".join(f"{s[k]} {k}" for k in order if s[k])
