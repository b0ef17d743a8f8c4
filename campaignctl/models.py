"""The database tables, as SQLModel models: the one definition of the schema.

Alembic revisions (``campaignctl/migrations/versions``) are written from these models,
and a test compares the migrated schema of both backends with them.
JSON columns hold canonical JSON text (see ``campaignctl.values.canonical``) so that
SQL can compare values without decoding them. Text sorts by byte (``COLLATE "C"`` on
PostgreSQL, SQLite's default) so that names and keys are listed in the same order on
both backends. Timestamps are ISO 8601 UTC text, which sorts like time.
"""

from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, Text, UniqueConstraint, false
from sqlmodel import Column, Field, SQLModel

#: Text compared and sorted by byte on both backends.
CText = Text().with_variant(Text(collation="C"), "postgresql")
#: Tables whose primary key is their only access path are WITHOUT ROWID on SQLite.
NO_ROWID = {"sqlite_with_rowid": False}


def _col(
    type_: Any,
    *args: Any,
    nullable: bool = True,
    primary_key: bool = False,
    default: Any = None,
    server_default: Any = None,
    unique: bool = False,
    index: bool = False,
) -> Any:
    return Field(
        default=default,
        sa_column=Column(
            type_,
            *args,
            nullable=nullable and not primary_key,
            primary_key=primary_key,
            server_default=server_default,
            unique=unique,
            index=index,
        ),
    )


def text(
    *,
    nullable: bool = True,
    default: Any = None,
    server_default: Any = None,
    primary_key: bool = False,
    unique: bool = False,
) -> Any:
    return _col(
        CText, nullable=nullable, default=default, server_default=server_default, primary_key=primary_key, unique=unique
    )


def ref(target: str, *, cascade: bool = False, nullable: bool = False, primary_key: bool = False) -> Any:
    return _col(
        Integer, ForeignKey(target, ondelete="CASCADE" if cascade else None), nullable=nullable, primary_key=primary_key
    )


def serial() -> Any:
    return Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))


def integer(
    *,
    nullable: bool = True,
    default: Any = None,
    server_default: Any = None,
    primary_key: bool = False,
    big: bool = False,
) -> Any:
    return _col(
        BigInteger if big else Integer,
        nullable=nullable,
        default=default,
        server_default=server_default,
        primary_key=primary_key,
    )


def boolean() -> Any:
    return _col(Boolean, nullable=False, default=False, server_default=false())


class Interface(SQLModel, table=True):
    __tablename__ = "interface"
    id: Optional[int] = serial()
    name: str = text(nullable=False, unique=True)
    type: str = text(nullable=False)
    settings: str = text(nullable=False, default="{}", server_default="{}")  # JSON; credentials by env name
    created_at: str = text(nullable=False)
    updated_at: str = text(nullable=False)


class DeviceType(SQLModel, table=True):
    __tablename__ = "device_type"
    id: Optional[int] = serial()
    name: str = text(nullable=False, unique=True)
    created_at: str = text(nullable=False)


class FirmwareType(SQLModel, table=True):
    __tablename__ = "firmware_type"
    __table_args__ = (UniqueConstraint("device_type_id", "name"),)
    id: Optional[int] = serial()
    device_type_id: int = ref("device_type.id", cascade=True)
    name: str = text(nullable=False)
    version_key: str = text(nullable=False)
    url_key: str = text(nullable=False)
    token_key: Optional[str] = text()


class Device(SQLModel, table=True):
    __tablename__ = "device"
    __table_args__ = (Index("ix_device_type", "device_type_id"), Index("ix_device_interface", "interface_id"))
    id: Optional[int] = serial()
    name: str = text(nullable=False, unique=True)
    device_type_id: int = ref("device_type.id")
    interface_id: int = ref("interface.id")
    tags: str = text(nullable=False, default="{}", server_default="{}")  # JSON object of strings
    created_at: str = text(nullable=False)
    updated_at: str = text(nullable=False)
    secret_salt: Optional[str] = text()  # HTTP devices: the secret is derived from it and the key file
    secret_hash: Optional[str] = text()  # SHA-256 of the secret, to check a device's bearer token


class DeviceConfig(SQLModel, table=True):
    """One configuration entry of a device: desired (users, campaigns) and reported (device)."""

    __tablename__ = "device_config"
    # By revision: the supervision finds the few entries written after a job's own
    # writes (a user's change makes a device invalid) without reading every entry.
    __table_args__ = (Index("ix_device_config_revision", "desired_revision"), NO_ROWID)
    device_id: int = ref("device.id", cascade=True, primary_key=True)
    key: str = text(primary_key=True)
    desired: Optional[str] = text()  # canonical JSON; NULL when never set
    desired_at: Optional[str] = text()
    desired_revision: Optional[int] = integer(big=True)  # from the global revision counter
    desired_by: Optional[str] = text()  # "user" or "job:<id>"
    secret: bool = boolean()
    reported: Optional[str] = text()
    reported_at: Optional[str] = text()


class Firmware(SQLModel, table=True):
    __tablename__ = "firmware"
    __table_args__ = (UniqueConstraint("device_type_id", "firmware_type", "version"),)
    id: Optional[int] = serial()
    device_type_id: int = ref("device_type.id")
    firmware_type: str = text(nullable=False)
    version: str = text(nullable=False)
    url: str = text(nullable=False)
    token: Optional[str] = text()
    sha256: Optional[str] = text()
    size: Optional[int] = integer(big=True)
    description: Optional[str] = text()
    created_at: str = text(nullable=False)
    recalled_at: Optional[str] = text()  # recalled: no campaign may ship it
    recall_reason: Optional[str] = text()


class Campaign(SQLModel, table=True):
    __tablename__ = "campaign"
    __table_args__ = (Index("ix_campaign_status", "status", "start_at"),)
    id: Optional[int] = serial()
    name: str = text(nullable=False, unique=True)
    description: Optional[str] = text()
    status: str = text(nullable=False, default="draft", server_default="draft")
    spec: str = text(nullable=False)  # JSON: the normalised manifest
    secret_keys: str = text(nullable=False, default="[]", server_default="[]")  # JSON list of secret keys
    created_at: str = text(nullable=False)
    updated_at: str = text(nullable=False)
    launched_at: Optional[str] = text()
    completed_at: Optional[str] = text()
    start_at: Optional[str] = text()  # scheduled start (UTC ISO 8601)
    reason: Optional[str] = text()  # why it is paused, aborted or cancelled
    launch_settings: Optional[str] = text()  # JSON: the launch options, kept until a scheduled start
    rollback_of: Optional[str] = text()  # the campaign whose before-values this one puts back


class Job(SQLModel, table=True):
    __tablename__ = "job"
    __table_args__ = (Index("ix_job_campaign", "campaign_id"),)
    id: Optional[int] = serial()
    campaign_id: int = ref("campaign.id")
    status: str = text(nullable=False, default="created", server_default="created")
    step: str = text(nullable=False, default="resolve", server_default="resolve")
    plan: str = text(nullable=False, default="{}", server_default="{}")  # JSON: values per device type
    settings: str = text(nullable=False, default="{}", server_default="{}")  # JSON: delivery policy
    total: int = integer(nullable=False, default=0, server_default="0")
    lease_owner: Optional[str] = text()
    lease_expires_at: Optional[float] = _col(Float)  # the database's clock, epoch seconds
    error: Optional[str] = text()
    created_at: str = text(nullable=False)
    started_at: Optional[str] = text()
    finished_at: Optional[str] = text()
    written_at: Optional[str] = text()  # the write step finished
    # The revisions the job's writes took, "r1,r2,…": the supervision reads the entries
    # others wrote between and after them without scanning the job's items.
    revisions: Optional[str] = text()


class JobItem(SQLModel, table=True):
    """One device of a job: pending → syncing (written) → delivered | failed; or cancelled."""

    __tablename__ = "job_item"
    __table_args__ = (
        Index("ix_job_item_batch", "job_id", "batch", "status", "device_id"),
        Index("ix_job_item_device", "device_id"),
        NO_ROWID,
    )
    job_id: int = ref("job.id", cascade=True, primary_key=True)
    device_id: int = ref("device.id", primary_key=True)
    status: str = text(nullable=False, default="pending", server_default="pending")
    revision: Optional[int] = integer(big=True)
    attempts: int = integer(nullable=False, default=0, server_default="0")
    error: Optional[str] = text()
    updated_at: Optional[str] = text()
    batch: int = integer(nullable=False, default=1, server_default="1")
    delivered_at: Optional[str] = text()
    joined_at: Optional[str] = text()  # a dynamic campaign's device that came to match after launch


class JobBatch(SQLModel, table=True):
    """pending → releasing → delivering → baking → promoted | tripped; or cancelled."""

    __tablename__ = "job_batch"
    __table_args__ = (NO_ROWID,)
    job_id: int = ref("job.id", cascade=True, primary_key=True)
    number: int = integer(primary_key=True)
    size: int = integer(nullable=False)
    status: str = text(nullable=False, default="pending", server_default="pending")
    accepted: bool = boolean()  # resumed by a user after it tripped: no more thresholds
    started_at: Optional[str] = text()
    delivered_at: Optional[str] = text()
    finished_at: Optional[str] = text()
    reason: Optional[str] = text()


class JobStep(SQLModel, table=True):
    """A unit of delivery work: a batch's release, or a retry."""

    __tablename__ = "job_step"
    __table_args__ = (NO_ROWID,)
    job_id: int = ref("job.id", cascade=True, primary_key=True)
    number: int = integer(primary_key=True)
    kind: str = text(nullable=False)  # batch | retry
    batch: Optional[int] = integer()
    devices: int = integer(nullable=False, default=0, server_default="0")
    started_at: str = text(nullable=False)


class JobItemHistory(SQLModel, table=True):
    """What a job item was before a retry step reset it."""

    __tablename__ = "job_item_history"
    __table_args__ = (NO_ROWID,)
    job_id: int = ref("job.id", cascade=True, primary_key=True)
    device_id: int = integer(primary_key=True)
    step: int = integer(primary_key=True)
    status: str = text(nullable=False)
    attempts: int = integer(nullable=False)
    error: Optional[str] = text()
    at: str = text(nullable=False)


class JobItemBefore(SQLModel, table=True):
    """A desired entry as it was before the job overwrote it."""

    __tablename__ = "job_item_before"
    __table_args__ = (NO_ROWID,)
    job_id: int = ref("job.id", cascade=True, primary_key=True)
    device_id: int = integer(primary_key=True)
    key: str = text(primary_key=True)
    desired: Optional[str] = text()
    desired_at: Optional[str] = text()
    desired_by: Optional[str] = text()
    secret: bool = boolean()


class JobShard(SQLModel, table=True):
    """A range of a job's devices that one worker delivers at a time, under a lease:
    pending → running → done; or back to pending (stopped, lease lost), or cancelled."""

    __tablename__ = "job_shard"
    __table_args__ = (Index("ix_job_shard_status", "status", "job_id"), NO_ROWID)
    job_id: int = ref("job.id", cascade=True, primary_key=True)
    number: int = integer(primary_key=True)
    first_device_id: int = integer(nullable=False)
    last_device_id: int = integer(nullable=False)
    size: int = integer(nullable=False)
    status: str = text(nullable=False, default="pending", server_default="pending")
    worker: Optional[str] = text()
    lease_expires_at: Optional[float] = _col(Float)  # the database's clock, epoch seconds
    delivered: int = integer(nullable=False, default=0, server_default="0")
    failed: int = integer(nullable=False, default=0, server_default="0")
    started_at: Optional[str] = text()
    finished_at: Optional[str] = text()


class Approval(SQLModel, table=True):
    """One person's verdict on a campaign: approve or reject. ``apply`` voids them."""

    __tablename__ = "approval"
    __table_args__ = (NO_ROWID,)
    campaign_id: int = ref("campaign.id", cascade=True, primary_key=True)
    actor: str = text(primary_key=True)
    verdict: str = text(nullable=False)  # approve | reject
    comment: Optional[str] = text()
    at: str = text(nullable=False)


class Event(SQLModel, table=True):
    """The audit trail: one row per change, written in the change's own transaction.
    Append-only: names, not ids, so that events outlive what they speak of."""

    __tablename__ = "event"
    __table_args__ = (
        Index("ix_event_campaign", "campaign", "id"),
        Index("ix_event_device", "device", "id"),
        Index("ix_event_at", "at"),
    )
    id: Optional[int] = serial()
    at: str = text(nullable=False)
    actor: str = text(nullable=False)  # a person, an operator, or "engine"
    action: str = text(nullable=False)  # campaign.launched, batch.tripped, …
    campaign: Optional[str] = text()
    device: Optional[str] = text()
    details: str = text(nullable=False, default="{}", server_default="{}")  # JSON object


class Operator(SQLModel, table=True):
    """A person or script allowed into the operator API and the web front-end."""

    __tablename__ = "operator"
    id: Optional[int] = serial()
    name: str = text(nullable=False, unique=True)
    token_hash: str = text(nullable=False, unique=True)  # SHA-256 of the token: the token is shown once
    created_at: str = text(nullable=False)
    revoked_at: Optional[str] = text()
    last_used_at: Optional[str] = text()


class Meta(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = text(primary_key=True)
    value: int = integer(nullable=False, default=0, server_default="0", big=True)
