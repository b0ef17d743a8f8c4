"""``campaignctl simulate``: virtual devices that speak the real protocols.

MQTT devices share one client per interface and subscribe to their own config topic
when they come online, so the broker hands each its retained document exactly as it
would a real device; when the broker comes back after a restart, the client reconnects,
the online devices subscribe again and report their state (the reconnections are
counted). HTTP devices poll ``campaignctl serve`` with their secret and
ETag. Everything runs on one asyncio loop (plus paho's network thread), so a process
holds many hundreds of devices.

A device applies a new document after ``apply_delay`` and reports the applied values;
for a firmware type, it reports the new version only after a second delay (the
"install"), and never echoes URLs or tokens. ``fail_rate`` of the devices keep their
old values and report ``last_error``; ``offline_rate`` of them come online only after
up to ``offline_delay``. Which devices fail or come late, and their delays, depend only
on ``seed`` and the device name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from campaignctl import db
from campaignctl.errors import CampaignctlError

log = logging.getLogger("campaignctl.simulate")

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

ERROR_KEY = "last_error"


@dataclass
class Options:
    apply_delay: float = 1.0
    fail_rate: float = 0.0
    offline_rate: float = 0.0
    offline_delay: float = 5.0
    seed: int | None = None
    duration: float | None = None
    poll_interval: float = 1.0


@dataclass
class Stats:
    devices: int = 0
    late: int = 0  # came online after a delay
    failing: int = 0
    documents: int = 0
    applied: int = 0
    failed: int = 0
    reports: int = 0
    polls: int = 0  # HTTP devices: configuration requests answered (200 or 304)
    errors: int = 0  # transport errors (HTTP status, connection)
    reconnects: int = 0  # MQTT connections restored after the broker went away

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Device:
    name: str
    interface: str
    version_keys: set[str]  # firmware version keys: reported after the install
    hidden_keys: set[str]  # firmware URL and token keys: never reported
    state: dict[str, Any]
    rng: random.Random
    fails: bool = False
    online_after: float = 0.0
    online: bool = False  # MQTT: subscribed (again after every reconnection)
    applied_version: int = -1
    etag: str | None = None
    secret: str | None = None
    busy: asyncio.Task | None = field(default=None, repr=False)

    def jitter(self, base: float) -> float:
        return base * self.rng.uniform(0.5, 1.5)


class Simulator:
    def __init__(
        self,
        engine: "Engine",
        options: Options,
        *,
        interface: str | None = None,
        devices: int | None = None,
        server: str | None = None,
        info: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.engine, self.options, self.info = engine, options, info
        self.server = server
        self.stats = Stats()
        self.interfaces, self.devices = self._load(interface, devices)

    def _load(self, interface: str | None, limit: int | None) -> tuple[dict[str, Any], list[Device]]:
        with db.read(self.engine) as conn:
            rows = db.run(
                conn,
                "SELECT name, type, settings FROM interface WHERE type IN ('mqtt', 'http')"
                + (" AND name = :name" if interface else "")
                + " ORDER BY name",
                {"name": interface},
            ).all()
            if interface and not rows:
                kind = db.run(conn, "SELECT type FROM interface WHERE name = :name", {"name": interface}).scalar()
                raise CampaignctlError(
                    f"no interface named {interface!r}"
                    if kind is None
                    else f"interface {interface!r} is a {kind} interface: only mqtt and http devices can be simulated"
                )
            interfaces = {r[0]: {"type": r[1], "settings": db.loads(r[2], dict)} for r in rows}
            devices = (
                db.run(
                    conn,
                    "SELECT d.id, d.name, i.name, d.device_type_id FROM device d JOIN interface i ON i.id = d.interface_id "
                    "WHERE i.name IN :interfaces ORDER BY d.name" + (" LIMIT :limit" if limit is not None else ""),
                    {"interfaces": list(interfaces), "limit": limit},
                    "interfaces",
                ).all()
                if interfaces
                else []
            )
            firmware: dict[int, tuple[set[str], set[str]]] = {}
            for type_id, version_key, url_key, token_key in db.run(
                conn, "SELECT device_type_id, version_key, url_key, token_key FROM firmware_type"
            ):
                versions, hidden = firmware.setdefault(type_id, (set(), set()))
                versions.add(version_key)
                hidden.update(k for k in (url_key, token_key) if k)
            reported: dict[int, dict[str, Any]] = {}
            for device_id, key, value in db.run(
                conn, "SELECT device_id, key, reported FROM device_config WHERE reported IS NOT NULL"
            ):
                reported.setdefault(device_id, {})[key] = db.loads(value)
        if not devices:
            raise CampaignctlError("no device to simulate (mqtt and http interfaces only)")
        seed = self.options.seed
        out = []
        for device_id, name, iface, type_id in devices:
            versions, hidden = firmware.get(type_id, (set(), set()))
            rng = random.Random(f"{seed}:{name}") if seed is not None else random.Random()
            device = Device(name, iface, versions, hidden, reported.get(device_id, {}), rng)
            device.fails = rng.random() < self.options.fail_rate
            if rng.random() < self.options.offline_rate:
                device.online_after = rng.uniform(0.5, 1.0) * self.options.offline_delay
            out.append(device)
        return interfaces, out

    # -- the devices' behaviour ------------------------------------------------

    def _document(self, device: Device, payload: bytes | str) -> None:
        try:
            doc = json.loads(payload)
            version, configuration = int(doc["version"]), dict(doc["configuration"])
        except (ValueError, KeyError, TypeError) as exc:
            self.stats.errors += 1
            log.debug("%s: unreadable document (%s)", device.name, exc, extra={"device": device.name})
            return
        if version <= device.applied_version:
            return  # the same document again: already applied
        device.applied_version = version
        self.stats.documents += 1
        if device.busy is not None:
            device.busy.cancel()  # a newer document replaces the one being applied
        device.busy = asyncio.get_running_loop().create_task(self._apply(device, configuration))

    async def _apply(self, device: Device, configuration: dict[str, Any]) -> None:
        await asyncio.sleep(device.jitter(self.options.apply_delay))
        if device.fails:
            self.stats.failed += 1
            await self._report(device, {ERROR_KEY: "apply failed: simulated failure, old values kept"})
            return
        plain = {k: v for k, v in configuration.items() if k not in device.version_keys and k not in device.hidden_keys}
        installs = {k: v for k, v in configuration.items() if k in device.version_keys and device.state.get(k) != v}
        if plain:
            await self._report(device, plain)
        if installs:
            await asyncio.sleep(device.jitter(self.options.apply_delay))  # download, install, reboot
            await self._report(device, installs)
        self.stats.applied += 1

    async def _report(self, device: Device, values: dict[str, Any]) -> None:
        device.state.update(values)
        kind = self.interfaces[device.interface]["type"]
        ok = self._mqtt_publish_state(device) if kind == "mqtt" else await self._http_report(device, values)
        self._count_report(ok)

    def _count_report(self, ok: bool) -> None:
        if ok:
            self.stats.reports += 1
        else:
            self.stats.errors += 1

    # -- MQTT ------------------------------------------------------------------

    def _mqtt_start(self, name: str, settings: dict[str, Any], loop: asyncio.AbstractEventLoop) -> Any:
        from campaignctl.interfaces.mqtt import Settings, connect, new_client

        s = Settings.model_validate(settings)
        client = new_client(name, s, purpose="simulate")
        try:
            connect(client, s, timeout=10)
        except Exception as exc:  # noqa: BLE001 - refused, unreachable, TLS: the interface's problem, said as such
            raise CampaignctlError(f"interface {name}: {exc}") from None
        prefix = s.topic_prefix.count("/") + 1
        devices = [d for d in self.devices if d.interface == name]
        by_name = {d.name: d for d in devices}

        def on_message(_c: Any, _u: Any, message: Any) -> None:
            parts = message.topic.split("/")
            device = by_name.get(parts[prefix]) if len(parts) == prefix + 2 else None
            if device is not None:
                loop.call_soon_threadsafe(self._document, device, message.payload)

        def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            # Only reconnections get here (``connect`` above handled the first CONNACK).
            # The session is not persistent: the broker forgot the subscriptions, and
            # paho does not restore them, so the devices that are online subscribe again.
            if reason.is_failure:
                return
            _subscribe(c, [s.config_topic(d.name) for d in devices if d.online])
            loop.call_soon_threadsafe(self._reconnected, name, [d for d in devices if d.online])

        def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if not self._stopping:
                loop.call_soon_threadsafe(
                    self.info, f"{name}: connection to {s.host}:{s.port} lost ({reason}); reconnecting"
                )

        client.on_message, client.on_connect, client.on_disconnect = on_message, on_connect, on_disconnect
        client.reconnect_delay_set(1, 30)
        client.loop_start()
        return client, s

    def _reconnected(self, interface: str, online: list[Device]) -> None:
        """Devices report their state after every reconnection, as the device rules ask
        (a broker that lost its retained messages gets them back)."""
        self.stats.reconnects += 1
        self.info(f"{interface}: reconnected; {len(online)} device(s) subscribed again")
        for device in online:
            if device.state:
                self._count_report(self._mqtt_publish_state(device))

    async def _mqtt_online(self, device: Device) -> None:
        client, settings = self._clients[device.interface]
        if device.state:  # a device that boots announces its state
            await self._report(device, {})
        # Online first: a reconnection from now on subscribes it again. Subscribing while
        # disconnected fails quietly; the reconnection then does it.
        device.online = True
        client.subscribe(settings.config_topic(device.name), qos=1)

    def _mqtt_publish_state(self, device: Device) -> bool:
        import paho.mqtt.client as mqtt

        client, settings = self._clients[device.interface]
        info = client.publish(settings.state_topic(device.name), json.dumps(device.state), qos=1, retain=True)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    # -- HTTP ------------------------------------------------------------------

    def _base_url(self, device: Device) -> str:
        return (
            self.server or self.interfaces[device.interface]["settings"].get("url") or "http://127.0.0.1:8080"
        ).rstrip("/")

    async def _http_device(self, device: Device) -> None:
        import aiohttp

        url = f"{self._base_url(device)}/v1/devices/{device.name}"
        headers = {"Authorization": f"Bearer {device.secret}"}
        if device.state:
            await self._report(device, {})
        # Spread the first polls so that a fleet does not knock all at once.
        await asyncio.sleep(device.rng.uniform(0, self.options.poll_interval))
        while True:
            try:
                extra = {"If-None-Match": device.etag} if device.etag else {}
                async with self._session.get(f"{url}/configuration", headers={**headers, **extra}) as response:
                    if response.status == 200:
                        device.etag = response.headers.get("ETag")
                        self._document(device, await response.read())
                    elif response.status != 304:
                        self.stats.errors += 1
                        log.debug(
                            "%s: configuration poll answered %s",
                            device.name,
                            response.status,
                            extra={"device": device.name},
                        )
                    if response.status in (200, 304):
                        self.stats.polls += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                # Counted (transport errors), and a line at debug level: a server that
                # is down would otherwise fill the log with a line per device per poll.
                self.stats.errors += 1
                log.debug(
                    "%s: configuration poll failed: %s",
                    device.name,
                    exc or type(exc).__name__,
                    extra={"device": device.name},
                )
            await asyncio.sleep(self.options.poll_interval)

    async def _http_report(self, device: Device, values: dict[str, Any]) -> bool:
        import aiohttp

        url = f"{self._base_url(device)}/v1/devices/{device.name}/state"
        try:
            async with self._session.put(
                url,
                data=json.dumps(device.state),
                headers={"Authorization": f"Bearer {device.secret}", "Content-Type": "application/json"},
            ) as response:
                return response.status == 204
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    # -- running -----------------------------------------------------------------

    async def _device(self, device: Device) -> None:
        if device.online_after:
            await asyncio.sleep(device.online_after)
        kind = self.interfaces[device.interface]["type"]
        if kind == "mqtt":
            await self._mqtt_online(device)
        else:
            await self._http_device(device)

    async def run(self, stop: asyncio.Event | None = None) -> Stats:
        import aiohttp

        loop = asyncio.get_running_loop()
        self._clients: dict[str, Any] = {}
        self._stopping = False
        http_devices = [d for d in self.devices if self.interfaces[d.interface]["type"] == "http"]
        if http_devices:
            from campaignctl.credentials import secrets_of

            found = secrets_of(self.engine, [d.name for d in http_devices])
            for device in http_devices:
                device.secret = found.get(device.name)
            missing = [d.name for d in http_devices if d.secret is None]
            if missing:
                raise CampaignctlError(f"{len(missing)} http device(s) have no secret (first: {missing[0]})")
        self.stats.devices = len(self.devices)
        self.stats.late = sum(1 for d in self.devices if d.online_after)
        self.stats.failing = sum(1 for d in self.devices if d.fails)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=10)
        )
        tasks: list[asyncio.Task] = []
        try:
            for name, spec in self.interfaces.items():
                if spec["type"] == "mqtt" and any(d.interface == name for d in self.devices):
                    self._clients[name] = await loop.run_in_executor(
                        None, self._mqtt_start, name, spec["settings"], loop
                    )
            tasks = [loop.create_task(self._device(d)) for d in self.devices]
            waiters: list[asyncio.Task[Any]] = [
                loop.create_task(asyncio.sleep(self.options.duration if self.options.duration is not None else 1e9))
            ]
            if stop is not None:
                waiters.append(loop.create_task(stop.wait()))
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            tasks += waiters
        finally:
            for task in tasks + [d.busy for d in self.devices if d.busy]:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, *(d.busy for d in self.devices if d.busy), return_exceptions=True)
            _log_failures(outcomes)
            await self._session.close()
            self._stopping = True
            for client, _ in self._clients.values():
                client.disconnect()
                client.loop_stop()
        return self.stats


def _log_failures(outcomes: list[Any]) -> None:
    """A device task that ended on an error (not a cancellation) is a bug of the
    simulator: logged, once per kind of error, rather than dropped."""
    from collections import Counter

    seen = Counter(
        f"{type(o).__name__}: {o}"
        for o in outcomes
        if isinstance(o, Exception) and not isinstance(o, asyncio.CancelledError)
    )
    for error, count in seen.items():
        log.error("%d simulated device(s) stopped on an error: %s", count, error)


def _subscribe(client: Any, topics: list[str]) -> None:
    """Subscribe to many topics, a few hundred per SUBSCRIBE packet."""
    for start in range(0, len(topics), 200):
        client.subscribe([(topic, 1) for topic in topics[start : start + 200]])


def simulate(engine: "Engine", options: Options, **kwargs: Any) -> Stats:
    """Run the simulation until ``options.duration`` or Ctrl-C (a normal end: the
    devices disconnect and the counts are returned)."""
    started = time.monotonic()
    simulator = Simulator(engine, options, **kwargs)
    simulator.info(f"simulating {len(simulator.devices)} device(s)")
    try:
        asyncio.run(simulator.run())
    except KeyboardInterrupt:
        pass
    simulator.info(f"simulated for {time.monotonic() - started:.1f}s")
    return simulator.stats
