"""HTTP interface: devices poll ``campaignctl serve`` for their desired document.

Nothing is pushed: a job leaves these devices ``syncing`` and the server counts a
delivery when it serves a device a document that holds the job's write.
"""

from __future__ import annotations

from typing import Iterable
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, field_validator

from campaignctl.interfaces.base import Delivery, DeliveryPolicy, OnDelivered, OnFailed, Refresh


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    #: The base URL at which devices reach ``campaignctl serve`` (used by the simulator
    #: and shown to device developers); serve itself binds with --host / --port.
    url: str = "http://127.0.0.1:8080"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an http:// or https:// URL")
        return value.rstrip("/")


class Driver:
    pushes = False

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
        raise NotImplementedError("devices on http interfaces fetch their documents themselves")
