"""MQTT interface: retained QoS 1 desired documents, device state from ``<prefix>/<device>/state``.

Publishing follows the measured fast path for paho-mqtt (see docs/performance.md): one
client driven from this thread, paho's own in-flight limit disabled (it rescans every
in-flight message on each PUBACK), and our own window so that the 16-bit packet ids
never run out.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Optional
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from campaignctl.errors import CampaignctlError
from campaignctl.interfaces.base import (
    Delivery,
    DeliveryPolicy,
    Failure,
    OnDelivered,
    OnFailed,
    Refresh,
    deliver_in_rounds,
)
from campaignctl.values import shown


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = "mqtt://127.0.0.1:1883"
    topic_prefix: str = "campaignctl"
    username_env: Optional[str] = None
    password_env: Optional[str] = None
    ca: Optional[str] = None  # CA bundle to verify the broker (mqtts://)
    cert: Optional[str] = None  # client certificate, for brokers that require one
    key: Optional[str] = None
    keepalive: int = Field(60, ge=5, le=65535)  # seconds

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("url must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("url has no host")
        try:
            _ = parts.port  # urlsplit checks the port when it is read
        except ValueError:
            raise ValueError("url has an invalid port") from None
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or value.endswith("/") or "+" in value or "#" in value:
            raise ValueError("topic_prefix must be non-empty, without wildcards or leading/trailing '/'")
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    def config_topic(self, device: str) -> str:
        return f"{self.topic_prefix}/{device}/config"

    def state_topic(self, device: str = "+") -> str:
        return f"{self.topic_prefix}/{device}/state"


class ConnectError(Exception):
    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def _env(name: str | None, interface: str, what: str) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if value is None:
        raise ConnectError(f"environment variable {name} ({what} of interface {interface}) is not set", permanent=True)
    return value


def new_client(interface: str, settings: Settings, *, purpose: str) -> Any:
    """A configured, not yet connected paho client (credentials, TLS)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"campaignctl-{purpose}-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv311,
    )
    username = _env(settings.username_env, interface, "username")
    password = _env(settings.password_env, interface, "password")
    if username is not None or password is not None:
        client.username_pw_set(username, password)
    if urlsplit(settings.url).scheme == "mqtts":
        try:
            client.tls_set(ca_certs=settings.ca, certfile=settings.cert, keyfile=settings.key)
        except (OSError, ValueError) as exc:  # a missing file, or not a certificate
            raise ConnectError(
                f"interface {interface}: TLS files (ca, cert, key) unusable: {exc}", permanent=True
            ) from None
    return client


class NetworkLoop:
    """One turn of a paho client's network loop, as ``client.loop(timeout)`` does, but
    waiting with ``selectors`` (epoll on Linux) through paho's external-loop API.

    paho's own loops (``loop``, ``loop_forever``, ``loop_start``) wait in
    ``select.select``, which refuses descriptors from 1024 on: in ``serve``, whose file
    limit is raised for thousands of device connections, a broker connection made
    while many are open gets such a number, and paho takes the refusal for a lost
    connection, again at every reconnect: the client would never get through."""

    def __init__(self, client: Any) -> None:
        import selectors

        self.client = client
        self._selector = selectors.DefaultSelector()
        self._sock: Any = None
        self._events = 0

    def __call__(self, timeout: float) -> int:
        import selectors

        import paho.mqtt.client as mqtt

        client = self.client
        sock = client.socket()
        if sock is None:
            return int(mqtt.MQTT_ERR_NO_CONN)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.want_write() else 0)
        if sock is not self._sock:  # a new connection: its descriptor may be the old one's number
            self._forget()
            self._selector.register(sock, events)
            self._sock, self._events = sock, events
        elif events != self._events:
            self._selector.modify(sock, events)
            self._events = events
        # A TLS socket may hold decrypted bytes already: no waiting for the descriptor then.
        pending = sock.pending() if hasattr(sock, "pending") else 0
        ready = 0
        for _key, mask in self._selector.select(0 if pending else timeout):
            ready |= mask
        if ready & selectors.EVENT_READ or pending:
            rc = client.loop_read()
            if rc or client.socket() is None:
                return int(rc)
        if ready & selectors.EVENT_WRITE:
            rc = client.loop_write()
            if rc or client.socket() is None:
                return int(rc)
        return int(client.loop_misc())

    def _forget(self) -> None:
        if self._sock is not None:
            try:
                self._selector.unregister(self._sock)
            except (KeyError, ValueError, OSError):  # closed by paho already
                pass
            self._sock = None

    def close(self) -> None:
        self._forget()
        self._selector.close()


def connect(client: Any, settings: Settings, timeout: float, pump: NetworkLoop | None = None) -> None:
    """Connect and wait for the broker's CONNACK, driving the client from this thread
    (with ``pump``, the loop the caller goes on with)."""
    if pump is None:
        pump = NetworkLoop(client)
        try:
            return connect(client, settings, timeout, pump)
        finally:
            pump.close()
    result: dict[str, Any] = {}
    client.on_connect = lambda _c, _u, _f, reason, _p: result.setdefault("reason", reason)
    client.connect_timeout = timeout
    try:
        client.connect(settings.host, settings.port, keepalive=settings.keepalive)
    except OSError as exc:
        raise ConnectError(f"cannot connect to {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + timeout
    while "reason" not in result:
        if time.monotonic() > deadline:
            client.disconnect()
            raise ConnectError(f"no CONNACK from {settings.host}:{settings.port} within {timeout:g}s")
        rc = pump(0.05)
        if rc and "reason" not in result:
            raise ConnectError(f"connection to {settings.host}:{settings.port} lost during CONNECT")
    reason = result["reason"]
    if reason.is_failure:
        client.disconnect()
        # Refused credentials or client id do not get better by retrying.
        raise ConnectError(f"broker {settings.host}:{settings.port} refused the connection: {reason}", permanent=True)


class Driver:
    pushes = True

    def __init__(self, name: str, settings: Settings) -> None:
        self.name, self.settings = name, settings

    def deliver(
        self,
        deliveries: Iterable[Delivery],
        policy: DeliveryPolicy,
        on_delivered: OnDelivered,
        on_failed: OnFailed,
        refresh: Refresh | None = None,
    ) -> None:
        deliver_in_rounds(self.deliver_round, deliveries, policy, on_delivered, on_failed, refresh)

    def deliver_round(
        self, deliveries: Iterable[Delivery], policy: DeliveryPolicy, on_delivered: OnDelivered
    ) -> list[Failure]:
        import paho.mqtt.client as mqtt

        settings = self.settings
        failures: list[Failure] = []
        try:
            client = new_client(self.name, settings, purpose="push")
            client.max_inflight_messages_set(0)  # ours is the window below
            loop = NetworkLoop(client)
            connect(client, settings, policy.timeout, loop)
        except (ConnectError, ValueError, OSError) as exc:
            permanent = getattr(exc, "permanent", False)
            return [Failure(d, str(exc), permanent) for d in deliveries]

        inflight: dict[int, tuple[Delivery, float]] = {}
        lost: list[str] = []

        def on_publish(_c: Any, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
            entry = inflight.pop(mid, None)
            if entry is not None:
                on_delivered(entry[0])

        def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            lost.append(f"connection to {settings.host}:{settings.port} lost: {reason}")

        client.on_publish = on_publish
        client.on_disconnect = on_disconnect
        window = max(1, min(policy.window, 60000))
        timeout = policy.timeout

        def pump() -> None:
            rc = loop(0.01)
            if rc != mqtt.MQTT_ERR_SUCCESS and not lost:
                lost.append(f"connection to {settings.host}:{settings.port} lost: {mqtt.error_string(rc)}")
            # Dicts keep insertion order: the first entry is the oldest in flight.
            now = time.monotonic()
            while inflight:
                mid, (delivery, sent) = next(iter(inflight.items()))
                if now - sent < timeout:
                    break
                del inflight[mid]
                failures.append(Failure(delivery, f"no PUBACK within {timeout:g}s"))

        iterator = iter(deliveries)
        for delivery in iterator:
            while len(inflight) >= window and not lost:
                pump()
            if lost:
                failures.append(Failure(delivery, lost[0]))
                break
            info = client.publish(settings.config_topic(delivery.device), delivery.payload, qos=1, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                failures.append(Failure(delivery, f"publish failed: {mqtt.error_string(info.rc)}"))
                if info.rc == mqtt.MQTT_ERR_NO_CONN:
                    lost.append(f"connection to {settings.host}:{settings.port} lost")
                    break
                continue
            inflight[info.mid] = (delivery, time.monotonic())
        while inflight and not lost:
            pump()
        if lost:
            # Whatever was in flight or not yet sent is retried in the next round.
            failures.extend(Failure(d, lost[0]) for d, _ in inflight.values())
            failures.extend(Failure(d, lost[0]) for d in iterator)
            inflight.clear()
        client.disconnect()
        loop.close()
        return failures


class StateListener:
    """Subscribes to ``<prefix>/+/state`` and hands each message to ``on_state``.

    The client runs in a thread of its own (``NetworkLoop``: no descriptor limit), and
    reconnects after any loss, waiting 1 s, then twice as long each time up to 30 s;
    ``on_state`` is called from that thread and must be quick (the caller queues and
    batches). ``down_for()`` says how long it has been without a broker.
    """

    #: seconds to wait between connection attempts: first, most
    RECONNECT_DELAYS = (1.0, 30.0)
    #: how long a turn of the network loop waits at most (and a stop may take)
    TURN = 0.2

    def __init__(
        self,
        name: str,
        settings: Settings,
        on_state: Callable[[str, str, bytes], None],
        on_event: Callable[[str], None] | None = None,
        *,
        share: str | None = None,
        on_problem: Callable[[str], None] | None = None,
    ) -> None:
        self.name, self.settings = name, settings
        self.on_state, self.on_event = on_state, on_event or (lambda _m: None)
        # Refusals, disconnections, errors: a warning where the caller logs (else an event).
        self.on_problem = on_problem or self.on_event
        # A shared subscription ($share/GROUP/...): the broker hands each state message to
        # one listener of the group, so several `serve` split the ingestion between them.
        self.topic = f"$share/{share}/{settings.state_topic()}" if share else settings.state_topic()
        self.client: Any = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._down_since: float | None = time.monotonic()  # until the first CONNACK

    def down_for(self) -> float:
        """Seconds since this listener last had a subscribed connection (0 while it has one)."""
        since = self._down_since
        return 0.0 if since is None else time.monotonic() - since

    def start(self, timeout: float = 10.0) -> None:
        settings = self.settings
        try:
            client = new_client(self.name, settings, purpose="listen")
        except ConnectError as exc:
            raise CampaignctlError(str(exc)) from None
        prefix_parts = settings.topic_prefix.count("/") + 1

        def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                self.on_problem(f"{self.name}: broker refused the connection: {reason}")
                return
            c.subscribe(self.topic, qos=1)
            self._down_since = None
            self.on_event(f"{self.name}: subscribed to {self.topic} on {settings.host}:{settings.port}")

        def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if self._down_since is None:
                self._down_since = time.monotonic()
            if not self._stopping.is_set():  # not our own stop()
                self.on_problem(f"{self.name}: disconnected ({reason}); reconnecting")

        def on_message(_c: Any, _u: Any, message: Any) -> None:
            # An exception here would end the network thread, and with it the
            # listener, for good: no message may do that.
            try:
                parts = message.topic.split("/")  # paho decodes the topic: it may not be UTF-8
            except UnicodeDecodeError:
                self.on_problem(f"{self.name}: message on a topic that is not UTF-8 text ignored")
                return
            if len(parts) == prefix_parts + 2:
                self.on_state(self.name, parts[prefix_parts], message.payload)

        client.on_connect, client.on_disconnect, client.on_message = on_connect, on_disconnect, on_message
        client.connect_timeout = timeout
        # Asynchronous connect: a broker that is down at start is retried in the
        # background, as after any later disconnection.
        client.connect_async(settings.host, settings.port, keepalive=settings.keepalive)
        self.client = client
        self._thread = threading.Thread(target=self._run, name=f"mqtt-listener-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client, loop = self.client, NetworkLoop(self.client)
        first, most = self.RECONNECT_DELAYS
        delay = first
        try:
            while not self._stopping.is_set():
                try:
                    if self._connect():
                        while not self._stopping.is_set() and loop(self.TURN) == 0:
                            if self._down_since is None:  # subscribed: the next loss starts over
                                delay = first
                except Exception as exc:  # noqa: BLE001 - a callback or paho failing: the listener goes on
                    # paho's or a callback's text may quote what a broker or device sent
                    self.on_problem(
                        f"{self.name}: listener error ({shown(f'{type(exc).__name__}: {exc}', 300)}); reconnecting"
                    )
                if self._stopping.is_set():
                    break
                self._stopping.wait(delay)
                delay = min(delay * 2, most)
        finally:
            client.disconnect()
            loop(0)  # the DISCONNECT packet, if it could not be sent at once
            loop.close()

    def _connect(self) -> bool:
        try:
            self.client.reconnect()
            return True
        except (OSError, ValueError):  # refused, unreachable, unresolvable, timed out
            self.on_problem(f"{self.name}: cannot connect to {self.settings.host}:{self.settings.port}; retrying")
            return False

    def stop(self) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(10)
