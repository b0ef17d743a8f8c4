"""Devices, interfaces and device types: import, listing, desired and reported configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from campaignctl import audit, db, dialect, store
from campaignctl.errors import InputError
from campaignctl.suggest import did_you_mean
from campaignctl.values import MAX_STATE_BYTES, MAX_STATE_DEPTH, TooDeep, canonical, check_key, depth, loads, mask

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from campaignctl.manifests import Fleet


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged}


@dataclass
class ImportResult:
    devices: Counts = field(default_factory=Counts)
    interfaces: Counts = field(default_factory=Counts)
    device_types: Counts = field(default_factory=Counts)
    secrets: int = 0  # HTTP devices given a secret

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices.to_dict(),
            "interfaces": self.interfaces.to_dict(),
            "device_types": self.device_types.to_dict(),
            "secrets_provisioned": self.secrets,
        }


def import_fleet(engine: "Engine", path: str) -> ImportResult:
    """Upsert interfaces, device types and devices from a YAML or CSV fleet manifest.

    Everything happens in one transaction: a bad entry anywhere leaves the database as it was.
    """
    from campaignctl.manifests import load_fleet
    from campaignctl.yamlfile import gc_paused

    with gc_paused():  # 100k devices are a million objects, none of them garbage
        return _import(engine, load_fleet(path), path)


def _import(engine: "Engine", fleet: "Fleet", path: str) -> ImportResult:
    result = ImportResult()
    with db.write(engine) as conn:
        # Imports decide on what they read (new or changed, keys shared by firmware types)
        # about rows that may not exist yet: one import at a time.
        dialect.exclusive(conn, "fleet import")
        # Stamped under the lock: stamps follow the order imports commit in (dynamic._fleet_mark).
        now = db.utcnow()
        _upsert_interfaces(conn, fleet, now, result.interfaces)
        _upsert_device_types(conn, fleet, now, result.device_types, path)
        _upsert_devices(conn, fleet, now, result.devices, path)
        # A device (or interface) that left HTTP polling loses its secret: the device API
        # must not keep accepting it.
        db.run(
            conn,
            "UPDATE device SET secret_salt = NULL, secret_hash = NULL WHERE secret_hash IS NOT NULL "
            "AND interface_id IN (SELECT id FROM interface WHERE type <> 'http')",
        )
        if db.run(
            conn,
            "SELECT 1 FROM device d JOIN interface i ON i.id = d.interface_id "
            "WHERE i.type = 'http' AND d.secret_hash IS NULL LIMIT 1",
        ).first():
            from campaignctl import credentials

            result.secrets = credentials.provision(conn, credentials.load_key(engine, create=True))
        if result.devices.created or result.devices.updated:
            # Launches join devices by type right after an import: plan them on its numbers.
            dialect.analyze(conn, "device")
        audit.record(conn, "fleet.imported", details={"source": path, **result.to_dict()})
    return result


def _upsert_interfaces(conn: "Connection", fleet: "Fleet", now: str, counts: Counts) -> None:
    existing = {r.name: r for r in db.run(conn, "SELECT id, name, type, settings FROM interface")}
    for name, spec in fleet.interfaces.items():
        settings = canonical(spec["settings"])
        row = existing.get(name)
        if row is None:
            db.run(
                conn,
                "INSERT INTO interface (name, type, settings, created_at, updated_at) "
                "VALUES (:name, :type, :settings, :now, :now)",
                {"name": name, "type": spec["type"], "settings": settings, "now": now},
            )
            counts.created += 1
        elif row.type != spec["type"] or row.settings != settings:
            db.run(
                conn,
                "UPDATE interface SET type = :type, settings = :settings, updated_at = :now WHERE id = :id",
                {"type": spec["type"], "settings": settings, "now": now, "id": row.id},
            )
            counts.updated += 1
        else:
            counts.unchanged += 1


def _upsert_device_types(conn: "Connection", fleet: "Fleet", now: str, counts: Counts, source: str) -> None:
    types = {r.name: r.id for r in db.run(conn, "SELECT id, name FROM device_type")}
    for name, spec in fleet.device_types.items():
        type_id = types.get(name)
        is_new, changed = type_id is None, False
        if is_new:
            type_id = db.run(
                conn,
                "INSERT INTO device_type (name, created_at) VALUES (:name, :now) RETURNING id",
                {"name": name, "now": now},
            ).scalar_one()
            counts.created += 1
        current = {
            r.name: r
            for r in db.run(
                conn,
                "SELECT id, name, version_key, url_key, token_key FROM firmware_type WHERE device_type_id = :type_id",
                {"type_id": type_id},
            )
        }
        for fw_name, fw in spec.firmware_types.items():
            row = current.get(fw_name)
            wanted = (fw.version_key, fw.url_key, fw.token_key)
            keys = {"version_key": fw.version_key, "url_key": fw.url_key, "token_key": fw.token_key}
            if row is None:
                db.run(
                    conn,
                    "INSERT INTO firmware_type (device_type_id, name, version_key, url_key, token_key) "
                    "VALUES (:type_id, :name, :version_key, :url_key, :token_key)",
                    {"type_id": type_id, "name": fw_name, **keys},
                )
                changed = True
            elif (row.version_key, row.url_key, row.token_key) != wanted:
                db.run(
                    conn,
                    "UPDATE firmware_type SET version_key = :version_key, url_key = :url_key, "
                    "token_key = :token_key WHERE id = :id",
                    {**keys, "id": row.id},
                )
                changed = True
        # Firmware types kept from earlier imports must not share keys with the new ones.
        owners: dict[str, str] = {}
        for r in db.run(
            conn,
            "SELECT name, version_key, url_key, token_key FROM firmware_type WHERE device_type_id = :type_id "
            "ORDER BY name",
            {"type_id": type_id},
        ):
            for key in (r.version_key, r.url_key, r.token_key):
                if key is None:
                    continue
                if key in owners:
                    raise _fleet_error(
                        fleet,
                        f"key {key!r} is used by firmware types {owners[key]!r} and {r.name!r}",
                        ("device_types", name, "firmware_types"),
                        source,
                    )
                owners[key] = r.name
        if not is_new:
            if changed:
                counts.updated += 1
            else:
                counts.unchanged += 1


def _fleet_error(fleet: "Fleet", message: str, path: tuple, source: str) -> InputError:
    return fleet.doc.error(message, path) if fleet.doc else InputError(message, source=source)


def _upsert_devices(conn: "Connection", fleet: "Fleet", now: str, counts: Counts, source: str) -> None:
    if not fleet.devices:
        return
    types = {r.name: r.id for r in db.run(conn, "SELECT id, name FROM device_type")}
    ifaces = {r.name: r.id for r in db.run(conn, "SELECT id, name FROM interface")}
    existing = {r[0]: r[1:] for r in db.run(conn, "SELECT name, id, device_type_id, interface_id, tags FROM device")}
    inserts: list[tuple[Any, ...]] = []
    updates: list[dict[str, Any]] = []
    texts: dict[tuple, str] = {}  # devices mostly share a few tag sets: encode each once

    def hint(section: str) -> str:
        return f" (declare it under {section})" if fleet.doc else " (import a YAML fleet manifest that declares it)"

    for index, device in enumerate(fleet.devices):
        type_id = types.get(device.type)
        if type_id is None:
            raise fleet.error(
                f"unknown device type {device.type!r}" + (did_you_mean(device.type, types) or hint("device_types")),
                index,
                "type",
                source,
            )
        iface_id = ifaces.get(device.interface)
        if iface_id is None:
            raise fleet.error(
                f"unknown interface {device.interface!r}"
                + (did_you_mean(device.interface, ifaces) or hint("interfaces")),
                index,
                "interface",
                source,
            )
        tag_items = tuple(device.tags.items())
        tags = texts.get(tag_items)
        if tags is None:
            tags = texts[tag_items] = canonical(device.tags)
        row = existing.get(device.name)
        if row is None:
            inserts.append((device.name, type_id, iface_id, tags, now, now))
        elif (row[1], row[2], row[3]) != (type_id, iface_id, tags):
            updates.append({"type_id": type_id, "interface_id": iface_id, "tags": tags, "now": now, "id": row[0]})
        else:
            counts.unchanged += 1
    if inserts:
        from campaignctl.models import Device

        dialect.bulk_insert(
            conn,
            Device.__table__,  # type: ignore[attr-defined]
            ("name", "device_type_id", "interface_id", "tags", "created_at", "updated_at"),
            inserts,
        )
    if updates:
        db.run(
            conn,
            "UPDATE device SET device_type_id = :type_id, interface_id = :interface_id, tags = :tags, "
            "updated_at = :now WHERE id = :id",
            updates,
        )
    counts.created += len(inserts)
    counts.updated += len(updates)


def list_devices(
    engine: "Engine",
    *,
    type: str | None = None,
    tags: dict[str, str] | None = None,
    interface: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """The devices selected, in name order; ``limit`` and ``offset``: one page of them."""
    with db.read(engine) as conn:
        where, params = device_filter(conn, type=type, tags=tags, interface=interface)
        page = "" if limit is None else " LIMIT :page_limit OFFSET :page_offset"
        rows = db.run(
            conn,
            "SELECT d.name, t.name, i.name, d.tags, d.updated_at FROM device d "
            "JOIN device_type t ON t.id = d.device_type_id JOIN interface i ON i.id = d.interface_id "
            f"{where} ORDER BY d.name{page}",
            {**params, "page_limit": limit, "page_offset": offset},
        ).all()
    return [
        {"name": r[0], "type": r[1], "interface": r[2], "tags": db.loads(r[3], dict), "updated_at": r[4]} for r in rows
    ]


def count_devices(
    engine: "Engine", *, type: str | None = None, tags: dict[str, str] | None = None, interface: str | None = None
) -> int:
    """How many devices ``list_devices`` selects (without its page)."""
    with db.read(engine) as conn:
        where, params = device_filter(conn, type=type, tags=tags, interface=interface)
        return int(db.run(conn, f"SELECT count(*) FROM device d {where}", params).scalar_one())


def device_filter(
    conn: "Connection", *, type: str | None, tags: dict[str, str] | None, interface: str | None = None, alias: str = "d"
) -> tuple[str, dict[str, Any]]:
    """A WHERE clause (or "") selecting devices by type, tags and interface, and its
    named parameters (``filter_type``, ``filter_interface``, ``tag_key_N``, ``tag_value_N``)."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if type is not None:
        clauses.append(f"{alias}.device_type_id = (SELECT id FROM device_type WHERE name = :filter_type)")
        params["filter_type"] = type
    if interface is not None:
        clauses.append(f"{alias}.interface_id = (SELECT id FROM interface WHERE name = :filter_interface)")
        params["filter_interface"] = interface
    for n, (key, value) in enumerate((tags or {}).items()):
        clause, tag_params = dialect.tag_equals(conn, alias, key, value, n)
        clauses.append(clause)
        params.update(tag_params)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def show_device(engine: "Engine", name: str, *, show_secrets: bool = False) -> dict[str, Any]:
    with db.read(engine) as conn:
        device = store.device_row(conn, name)
        entries = db.run(
            conn,
            "SELECT key, desired, desired_at, desired_revision, desired_by, secret, reported, reported_at "
            "FROM device_config WHERE device_id = :device_id ORDER BY key",
            {"device_id": device.id},
        ).all()
    version = max((e.desired_revision or 0 for e in entries), default=0)
    return {
        "name": device.name,
        "type": device.type,
        "interface": device.interface,
        "tags": db.loads(device.tags, dict),
        "version": version,
        "created_at": device.created_at,
        "updated_at": device.updated_at,
        "configuration": [
            {
                "key": e.key,
                "desired": mask(
                    db.loads(e.desired), bool(e.secret) and e.desired is not None, show_secrets=show_secrets
                ),
                "desired_at": e.desired_at,
                "desired_by": e.desired_by,
                "reported": mask(
                    db.loads(e.reported), bool(e.secret) and e.reported is not None, show_secrets=show_secrets
                ),
                "reported_at": e.reported_at,
                "secret": bool(e.secret),
            }
            for e in entries
        ],
    }


@dataclass
class SetConfigResult:
    device: str
    version: int
    delivered: bool
    error: str | None = None


def set_config(
    engine: "Engine",
    name: str,
    values: dict[str, Any],
    *,
    secret: bool = False,
    deliver: bool = True,
    policy: Any = None,
) -> SetConfigResult:
    """A user's change of desired configuration: written, then delivered like a campaign's."""
    from campaignctl import delivery

    texts = {check_key(k): canonical(v) for k, v in values.items()}
    now = db.utcnow()
    with db.write(engine) as conn:
        device = store.device_row(conn, name)
        revision = store.next_revision(conn)
        store.write_desired(conn, [(device.id, k, v, now, revision, "user", secret) for k, v in texts.items()])
        # The keys, never the values: a key may be secret now, or have been before.
        details = {"keys": sorted(texts), "secret": secret, "revision": revision}
        audit.record(conn, "device.config_set", device=name, details=details)
    result = SetConfigResult(device=name, version=revision, delivered=False)
    if deliver:
        outcome = delivery.deliver_devices(engine, [device.id], policy=policy)
        result.delivered = device.id in outcome.delivered
        result.error = outcome.failed.get(device.id)
        if outcome.deferred:
            result.error = None  # a polling interface: the device fetches it itself
    return result


def report_state(engine: "Engine", name: str, values: dict[str, Any]) -> None:
    """Record reported state as if the device had sent it."""
    texts = {check_key(k): canonical(v) for k, v in values.items()}
    now = db.utcnow()
    with db.write(engine) as conn:
        device = store.device_row(conn, name)
        store.write_reported(conn, [(device.id, k, v, now) for k, v in texts.items()])


def parse_state_payload(payload: bytes | str) -> dict[str, str]:
    """A device's state message (MQTT or HTTP): a JSON object of valid keys → canonical
    JSON texts, which any backend stores and any terminal shows safely (control
    characters escaped). At most MAX_STATE_BYTES of UTF-8 (a byte order mark is allowed),
    objects and arrays nested at most MAX_STATE_DEPTH deep, no lone surrogate.

    Raises InputError naming the problem; the caller writes nothing for such a message.
    """
    data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    if len(data) > MAX_STATE_BYTES:
        raise InputError(f"state larger than {MAX_STATE_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")  # JSON's encoding; json.loads would also guess UTF-16 and -32
    except UnicodeDecodeError as exc:
        raise InputError(f"state is not UTF-8 text: byte {exc.start}: {exc.reason}") from None
    too_deep = f"state is nested too deeply (more than {MAX_STATE_DEPTH} levels of objects and arrays)"
    try:
        value = loads(text)
    except TooDeep:
        raise InputError(too_deep) from None
    except ValueError as exc:
        raise InputError(f"state is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"state must be a JSON object, not {type(value).__name__}")
    if not value:
        raise InputError("state is an empty object")
    if depth(value) > MAX_STATE_DEPTH:
        raise InputError(too_deep)
    for key in value:
        check_key(key)
    try:
        return {k: canonical(v) for k, v in value.items()}
    except ValueError as exc:
        raise InputError(f"state holds a value that is not JSON: {exc}") from None


def device_type_names(engine: "Engine") -> list[str]:
    """Every device type's name, in name order."""
    with db.read(engine) as conn:
        return [r[0] for r in db.run(conn, "SELECT name FROM device_type ORDER BY name")]


def device_campaigns(conn: "Connection", name: str) -> list[dict[str, Any]]:
    """The campaigns whose jobs included device ``name``, the latest first, with the
    device's delivery in each."""
    return [
        {"campaign": r[0], "status": r[1], "item": r[2], "updated_at": r[3]}
        for r in db.run(
            conn,
            "SELECT c.name, c.status, ji.status, ji.updated_at FROM job_item ji JOIN job j ON j.id = ji.job_id "
            "JOIN campaign c ON c.id = j.campaign_id JOIN device d ON d.id = ji.device_id "
            "WHERE d.name = :name ORDER BY j.id DESC",
            {"name": name},
        )
    ]
