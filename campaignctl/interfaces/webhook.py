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
from typing import Any, Iterable, Literal
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from campaignctl.interfaces.base import Delivery, DeliveryPolicy, Failure, OnDelivered, OnFailed, Refresh

MAX_RETRY_AFTER = 3600.0
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


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
    """``Retry-After`` as seconds: a number of seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        from datetime import datetime, timezone

        when = parsedate_to_datetime(value)
        return max(0.0, min((when - datetime.now(timezone.utc)).total_seconds(), MAX_RETRY_AFTER))
    except (TypeError, ValueError):
        return None


def _redact(text: str, payload: bytes) -> str:
    """The API's error text without the document's values: a platform that echoes the
    request would otherwise put tokens into job errors and the supervision."""
    import json

    values: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str) and len(value) >= 4:
            values.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    collect(json.loads(payload).get("configuration"))
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "***")
        text = text.replace(json.dumps(value)[1:-1], "***")  # as escaped in JSON
    return text


class Driver:
    pushes = True

    def __init__(self, name: str, settings: Settings) -> None:
        self.name, self.settings = name, settings
        self._refresh: Refresh | None = None

    def deliver(self, deliveries: Iterable[Delivery], policy: DeliveryPolicy, on_delivered: OnDelivered,
                on_failed: OnFailed, refresh: Refresh | None = None) -> None:
        self._refresh = refresh
        asyncio.run(self._deliver(deliveries, policy, on_delivered, on_failed))

    def _headers(self) -> dict[str, str] | str:
        headers = {"Content-Type": "application/json"}
        for name, env in self.settings.headers.items():
            if env not in os.environ:
                return f"environment variable {env} (header {name} of interface {self.name}) is not set"
            headers[name] = os.environ[env]
        return headers

    async def _deliver(self, deliveries: Iterable[Delivery], policy: DeliveryPolicy, on_delivered: OnDelivered,
                       on_failed: OnFailed) -> None:
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
                task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
            if tasks:
                await asyncio.gather(*tasks)

    async def _one(self, session: Any, delivery: Delivery, policy: DeliveryPolicy, on_delivered: OnDelivered,
                   on_failed: OnFailed) -> None:
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

    async def _retry(self, session: Any, delivery: Delivery, policy: DeliveryPolicy, first: Retryable,
                     on_delivered: OnDelivered, on_failed: OnFailed) -> None:
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
            wait=lambda state: delay(state.attempt_number + 1, state.outcome.exception()),
            retry=retry_if_exception_type(Retryable), reraise=True)
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
                body = await response.read()
                status = response.status
                if 200 <= status < 300:
                    return
                detail = f"HTTP {status} {response.reason or ''}".rstrip()
                text = _redact(body[:200].decode(errors="replace").strip(), delivery.payload)
                if text:
                    detail += f": {text}"
                if status == 429 or status >= 500:
                    raise Retryable(detail, retry_after_seconds(response.headers.get("Retry-After")))
                raise Permanent(detail)
        except asyncio.TimeoutError:
            raise Retryable(f"no response from {urlsplit(url).netloc} within {self.settings.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}") from None
