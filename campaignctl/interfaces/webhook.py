"""Webhook interface: the desired document is pushed to another platform's HTTP API.

Requests run concurrently on one aiohttp session (see docs/performance.md for why not
httpx), each with its own retries: connection errors, timeouts, 429 and 5xx are retried
with exponential backoff and jitter, never sooner than a ``Retry-After`` asks; any other
4xx fails the device at once with the status in the reason.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, Callable, Iterable, Iterator, Literal
from urllib.parse import quote, quote_plus, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from campaignctl.interfaces.base import Delivery, DeliveryPolicy, Failure, OnDelivered, OnFailed, Refresh

MAX_RETRY_AFTER = 3600.0
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SECONDS = re.compile(r"[0-9]+", re.ASCII)
#: How much of an answer's body is read (and dropped) at most: enough for a small one to
#: leave the connection reusable, never a large one held in memory or waited for.
DRAIN_LIMIT = 64 * 1024


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str  # e.g. https://api.example.com/things/{device}/desired
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)  # header → environment variable holding its value
    timeout: float = Field(10.0, gt=0)  # seconds per request
    concurrency: int = Field(64, ge=1, le=1024)  # requests in flight

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value.replace("{device}", "x"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an http:// or https:// URL")
        if "{device}" not in value:
            raise ValueError("url must contain {device}, replaced by the device name")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, env in value.items():
            if not _HEADER.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", env):
                raise ValueError(f"header {name}: {env!r} is not an environment variable name")
        return value

    def url_for(self, device: str) -> str:
        return self.url.replace("{device}", quote(device, safe=""))


class Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Permanent(Exception):
    pass


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds, or an HTTP date (RFC 9110
    §10.2.3); anything else a platform sends is ignored (None), never an error."""
    if not value:
        return None
    value = value.strip()
    # ASCII digits only: str.isdigit() also accepts "²" or "٣", which float() refuses.
    if _SECONDS.fullmatch(value):
        return min(float(value), MAX_RETRY_AFTER)
    try:
        from datetime import datetime, timezone

        when = parsedate_to_datetime(value)
        return max(0.0, min((when - datetime.now(timezone.utc)).total_seconds(), MAX_RETRY_AFTER))
    except (TypeError, ValueError, OverflowError, IndexError):  # not a date, or one without a zone
        return None


def status_reason(status: int) -> str:
    """``HTTP <status> <standard phrase>``: never the platform's own reason phrase or
    body, which may echo the request (its headers, tokens, the document) in any
    encoding; what the platform said in detail is in its own logs."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:  # a status outside the standard ones
        return f"HTTP {status}"


def _where(url: str) -> str:
    """host:port of ``url``, without its user, password, path or query."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname  # IPv6
    return f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def connection_error(exc: BaseException, url: str, redact: Callable[[str], str]) -> str:
    """A fixed description of a failed exchange: aiohttp's own texts can carry the URL
    (with its credentials or query tokens) or the reason phrase of a redirect's answer.
    The only free texts kept, the system's and the TLS library's, go through ``redact``
    all the same."""
    import aiohttp

    where = _where(url)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc.certificate_error, "verify_message", None) or "not trusted"
        return f"the TLS certificate of {where} is not accepted: {redact(reason)}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"the TLS handshake with {where} failed"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve the host of {where}"
    if isinstance(exc, aiohttp.ClientOSError):  # connecting, or the connection broke
        strerror = getattr(getattr(exc, "os_error", exc), "strerror", None) or exc.strerror
        verb = "cannot connect to" if isinstance(exc, aiohttp.ClientConnectorError) else "connection lost with"
        return f"{verb} {where}: {redact(strerror or 'network error')}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{where} closed the connection without answering"
    if isinstance(exc, aiohttp.TooManyRedirects):
        return f"{where}: too many redirects"
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return f"{where}: redirected to an invalid or non-HTTP URL"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{where}: {status_reason(exc.status)}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"{where}: the answer was cut short or malformed"
    return f"{type(exc).__name__} from {where}"


class Redactor:
    """Replaces every known secret by ``***`` in the forms a platform may echo it: as
    is, JSON-escaped, URL-encoded, base64 (standard or URL-safe, padded or not), and
    cut short to any prefix of at least ``MIN`` characters. Shorter values are left
    alone: masking every ``on`` or ``eu`` would mangle the text and hide nothing."""

    MIN = 4

    def __init__(self, values: Iterable[str]) -> None:
        forms = {form for value in values if len(value) >= self.MIN for form in _encodings(value)}
        self._forms = [f for f in forms if len(f) >= self.MIN]

    def __call__(self, text: str) -> str:
        # Spans of every form, merged: the longest echo wins where forms share a prefix
        # (``a%2Fb+c`` and ``a%2Fb%20c`` both start with ``a%2Fb``).
        spans = sorted(span for form in self._forms for span in _prefix_spans(text, form, self.MIN))
        merged: list[list[int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out, done = [], 0
        for start, end in merged:
            out += [text[done:start], "***"]
            done = end
        return "".join(out) + text[done:]


def _encodings(value: str) -> set[str]:
    import base64
    import json

    raw = value.encode()
    encoded = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return (
        {
            value,
            json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1],
            quote(value),
            quote(value, safe=""),
            quote_plus(value),
        }
        | encoded
        | {e.rstrip("=") for e in encoded}
    )


def _prefix_spans(text: str, form: str, least: int) -> Iterator[tuple[int, int]]:
    """Where ``text`` holds a prefix of ``form`` of ``least`` characters or more."""
    head, at = form[:least], text.find(form[:least])
    while at >= 0:
        end = at + least
        while end < len(text) and end - at < len(form) and text[end] == form[end - at]:
            end += 1
        yield at, end
        at = text.find(head, at + 1)


def request_secrets(url: str, headers: dict[str, str], payload: bytes) -> list[str]:
    """What a request carries that must never come back in an error: header values
    (and the user:password inside a Basic one), the URL's password and query values,
    and every string of the document (tokens, ``${VAR}`` values, secret entries)."""
    import base64
    import binascii
    import json
    from urllib.parse import parse_qsl

    values = [v for name, v in headers.items() if name.lower() != "content-type"]
    for value in list(values):
        scheme, _, credentials = value.partition(" ")
        values.append(credentials)
        if scheme.lower() == "basic":
            try:
                values.extend(
                    [(decoded := base64.b64decode(credentials, validate=True).decode()), decoded.partition(":")[2]]
                )
            except (binascii.Error, UnicodeDecodeError):
                pass
    parts = urlsplit(url)
    values += [parts.password or "", *(v for _, v in parse_qsl(parts.query))]

    def collect(value: Any) -> None:
        if isinstance(value, str):
            values.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    collect(json.loads(payload))
    return values


class Driver:
    pushes = True

    def __init__(self, name: str, settings: Settings) -> None:
        self.name, self.settings = name, settings
        self._refresh: Refresh | None = None

    def deliver(
        self,
        deliveries: Iterable[Delivery],
        policy: DeliveryPolicy,
        on_delivered: OnDelivered,
        on_failed: OnFailed,
        refresh: Refresh | None = None,
    ) -> None:
        self._refresh = refresh
        asyncio.run(self._deliver(deliveries, policy, on_delivered, on_failed))

    def _headers(self) -> dict[str, str] | str:
        headers = {"Content-Type": "application/json"}
        for name, env in self.settings.headers.items():
            if env not in os.environ:
                return f"environment variable {env} (header {name} of interface {self.name}) is not set"
            headers[name] = os.environ[env]
        return headers

    async def _deliver(
        self, deliveries: Iterable[Delivery], policy: DeliveryPolicy, on_delivered: OnDelivered, on_failed: OnFailed
    ) -> None:
        import aiohttp

        headers = self._headers()
        if isinstance(headers, str):
            for delivery in deliveries:
                on_failed(Failure(delivery, headers, permanent=True))
            return
        limit = self.settings.concurrency
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
            slots = asyncio.Semaphore(limit)
            tasks: set[asyncio.Task[None]] = set()
            for delivery in deliveries:
                await slots.acquire()
                task = asyncio.create_task(self._one(session, delivery, policy, on_delivered, on_failed))
                tasks.add(task)
                task.add_done_callback(lambda t: _finished(tasks, t, slots))
            if tasks:
                await asyncio.gather(*tasks)

    async def _one(
        self, session: Any, delivery: Delivery, policy: DeliveryPolicy, on_delivered: OnDelivered, on_failed: OnFailed
    ) -> None:
        # The first try runs outside tenacity: most requests succeed at once, and its
        # per-call set-up costs ~10% of a 256-way delivery's CPU.
        delivery.attempts = 1
        try:
            await self._send(session, delivery)
        except Permanent as exc:
            on_failed(Failure(delivery, str(exc), permanent=True))
            return
        except Retryable as exc:
            if policy.attempts > 1:
                await self._retry(session, delivery, policy, exc, on_delivered, on_failed)
            else:
                on_failed(Failure(delivery, str(exc)))
            return
        on_delivered(delivery)

    async def _retry(
        self,
        session: Any,
        delivery: Delivery,
        policy: DeliveryPolicy,
        first: Retryable,
        on_delivered: OnDelivered,
        on_failed: OnFailed,
    ) -> None:
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

        def delay(retry: int, exc: BaseException | None) -> float:
            """Exponential backoff with jitter, as for MQTT rounds, never sooner than
            the server's Retry-After."""
            wait = min(policy.backoff * 2 ** (retry - 1), policy.max_backoff) + random.uniform(0, policy.backoff)
            after = getattr(exc, "retry_after", None)
            return max(wait, after) if after is not None else wait

        await asyncio.sleep(delay(1, first))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts - 1),
            wait=lambda state: delay(state.attempt_number + 1, state.outcome.exception() if state.outcome else None),
            retry=retry_if_exception_type(Retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if self._refresh is not None:  # the newest document, not the one of the first try
                        fresh = self._refresh([delivery])
                        if not fresh:
                            return  # withdrawn: the job stopped
                        delivery.payload, delivery.version = fresh[0].payload, fresh[0].version
                    delivery.attempts = attempt.retry_state.attempt_number + 1
                    await self._send(session, delivery)
        except Retryable as exc:
            on_failed(Failure(delivery, str(exc)))
        except Permanent as exc:
            on_failed(Failure(delivery, str(exc), permanent=True))
        else:
            on_delivered(delivery)

    async def _send(self, session: Any, delivery: Delivery) -> None:
        import aiohttp

        url = self.settings.url_for(delivery.device)
        try:
            async with session.request(self.settings.method, url, data=delivery.payload) as response:
                await _drain(response)
                status = response.status
                if 200 <= status < 300:
                    return
                if status == 429 or status >= 500:
                    raise Retryable(status_reason(status), retry_after_seconds(response.headers.get("Retry-After")))
                raise Permanent(status_reason(status))
        except asyncio.TimeoutError:
            raise Retryable(f"no response from {_where(url)} within {self.settings.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            headers = {k: str(v) for k, v in session.headers.items()}
            redact = Redactor(request_secrets(url, headers, delivery.payload))
            raise Retryable(connection_error(exc, url, redact)) from None


async def _drain(response: Any) -> None:
    """Read and drop at most ``DRAIN_LIMIT`` bytes of the answer's body, which is never
    used: a small body read to its end leaves the connection reusable; past the limit
    the connection is closed on release instead (a platform may answer an endless or
    huge body)."""
    left = DRAIN_LIMIT
    while left > 0 and not response.content.at_eof():
        chunk = await response.content.read(min(left, 16 * 1024))
        if not chunk:
            return
        left -= len(chunk)


def _finished(tasks: "set[asyncio.Task[None]]", task: "asyncio.Task[None]", slots: asyncio.Semaphore) -> None:
    """A delivery task ended: forget it and free its slot."""
    tasks.discard(task)
    slots.release()
