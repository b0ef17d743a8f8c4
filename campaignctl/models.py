"""The database tables, as SQLModel models.

The schema itself is created and changed by the numbered migrations in
``campaignctl.migrations``; these models mirror it (a test keeps them in step).
JSON columns hold canonical JSON text (see ``campaignctl.values.canonical``) so that
SQL can compare values without decoding them.
"""

from __future__ import annotations

from typing import Optional

from sqlmodel import Field, SQLModel


class Interface(SQLModel, table=True):
    __tablename__ = "interface"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    type: str
    settings: str = "{}"  # JSON object; credentials are named by env variable, never stored
    created_at: str
    updated_at: str


class DeviceType(SQLModel, table=True):
    __tablename__ = "device_type"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    created_at: str


class FirmwareType(SQLModel, table=True):
    __tablename__ = "firmware_type"
    id: Optional[int] = Field(default=None, primary_key=True)
    device_type_id: int = Field(foreign_key="device_type.id")
    name: str
    version_key: str
    url_key: str
    token_key: Optional[str] = None


class Device(SQLModel, table=True):
    __tablename__ = "device"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    device_type_id: int = Field(foreign_key="device_type.id")
    interface_id: int = Field(foreign_key="interface.id")
    tags: str = "{}"  # JSON object of strings
    created_at: str
    updated_at: str
    secret_salt: Optional[str] = None  # HTTP devices: the secret is derived from it and the key file
    secret_hash: Optional[str] = None  # SHA-256 of the secret, to check a device's bearer token


class DeviceConfig(SQLModel, table=True):
    """One configuration entry of a device: desired (users, campaigns) and reported (device)."""

    __tablename__ = "device_config"
    device_id: int = Field(foreign_key="device.id", primary_key=True)
    key: str = Field(primary_key=True)
    desired: Optional[str] = None  # canonical JSON; NULL when never set
    desired_at: Optional[str] = None
    desired_revision: Optional[int] = None  # from the global revision counter
    desired_by: Optional[str] = None  # "user" or "job:<id>"
    secret: bool = False
    reported: Optional[str] = None
    reported_at: Optional[str] = None


class Firmware(SQLModel, table=True):
    __tablename__ = "firmware"
    id: Optional[int] = Field(default=None, primary_key=True)
    device_type_id: int = Field(foreign_key="device_type.id")
    firmware_type: str
    version: str
    url: str
    token: Optional[str] = None
    sha256: Optional[str] = None
    size: Optional[int] = None
    description: Optional[str] = None
    created_at: str


class Campaign(SQLModel, table=True):
    __tablename__ = "campaign"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    description: Optional[str] = None
    status: str = "draft"
    spec: str  # JSON: the normalised manifest (devices, configurations, expected_state, firmware)
    secret_keys: str = "[]"  # JSON list of configuration / expected_state keys that are secret
    created_at: str
    updated_at: str
    launched_at: Optional[str] = None
    completed_at: Optional[str] = None
    start_at: Optional[str] = None  # scheduled start (UTC ISO 8601)
    reason: Optional[str] = None  # why it is paused, aborted or cancelled
    launch_settings: Optional[str] = None  # JSON: the launch options, kept until a scheduled start


class Job(SQLModel, table=True):
    __tablename__ = "job"
    id: Optional[int] = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    status: str = "created"
    step: str = "resolve"
    plan: str = "{}"  # JSON: values per device type, frozen at launch
    settings: str = "{}"  # JSON: delivery policy (attempts, timeouts, window)
    total: int = 0
    lease_owner: Optional[str] = None
    lease_expires_at: Optional[float] = None
    error: Optional[str] = None
    created_at: str
    started_at: Optional[str] = None
    written_at: Optional[str] = None  # the write step finished
    finished_at: Optional[str] = None


class JobItem(SQLModel, table=True):
    """One device of a job: pending → syncing (written) → delivered | failed; or cancelled."""

    __tablename__ = "job_item"
    job_id: int = Field(foreign_key="job.id", primary_key=True)
    device_id: int = Field(foreign_key="device.id", primary_key=True)
    status: str = "pending"
    revision: Optional[int] = None
    attempts: int = 0
    error: Optional[str] = None
    updated_at: Optional[str] = None
    batch: int = 1
    delivered_at: Optional[str] = None


class JobBatch(SQLModel, table=True):
    """pending → releasing → delivering → baking → promoted | tripped; or cancelled."""

    __tablename__ = "job_batch"
    job_id: int = Field(foreign_key="job.id", primary_key=True)
    number: int = Field(primary_key=True)
    size: int
    status: str = "pending"
    accepted: bool = False  # resumed by a user after it tripped: no more thresholds
    started_at: Optional[str] = None
    delivered_at: Optional[str] = None
    finished_at: Optional[str] = None
    reason: Optional[str] = None


class JobStep(SQLModel, table=True):
    """A unit of delivery work: a batch's release, or a retry."""

    __tablename__ = "job_step"
    job_id: int = Field(foreign_key="job.id", primary_key=True)
    number: int = Field(primary_key=True)
    kind: str  # batch | retry
    batch: Optional[int] = None
    devices: int = 0
    started_at: str


class JobItemHistory(SQLModel, table=True):
    """What a job item was before a retry step reset it."""

    __tablename__ = "job_item_history"
    job_id: int = Field(foreign_key="job.id", primary_key=True)
    device_id: int = Field(primary_key=True)
    step: int = Field(primary_key=True)
    status: str
    attempts: int
    error: Optional[str] = None
    at: str


class JobItemBefore(SQLModel, table=True):
    """A desired entry as it was before the job overwrote it."""

    __tablename__ = "job_item_before"
    job_id: int = Field(foreign_key="job.id", primary_key=True)
    device_id: int = Field(primary_key=True)
    key: str = Field(primary_key=True)
    desired: Optional[str] = None
    desired_at: Optional[str] = None
    desired_by: Optional[str] = None
    secret: bool = False


class Meta(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: int = 0
