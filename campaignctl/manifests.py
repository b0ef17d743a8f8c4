"""Fleet and campaign manifests: parsing and validation into plain specs.

Nothing here touches the database; ``campaignctl.fleet`` and ``campaignctl.campaigns``
check the references (device types, interfaces, devices) inside their transactions.
"""

from __future__ import annotations

import csv
import datetime
import io
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple, Optional, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from campaignctl import interfaces
from campaignctl.errors import InputError
from campaignctl.names import check_name, name_problem
from campaignctl.rollout import MAX_COUNT, Rollout, check_count, parse_duration, parse_percent, parse_time
from campaignctl.spec import CampaignSpec
from campaignctl.suggest import did_you_mean
from campaignctl.values import MissingVariable, canonical, expand_env, key_problem
from campaignctl.versions import check_pattern
from campaignctl.windows import DAYS, check_zone, parse_clock, parse_day
from campaignctl.yamlfile import YamlDocument, format_path, read_text


def _check_key(value: str) -> str:
    problem = key_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Name = Annotated[str, AfterValidator(check_name)]
Key = Annotated[str, AfterValidator(_check_key)]


def _tag_value(value: Any) -> str:
    # Tags are strings; YAML turns `floor: 3` into an int, which users mean as "3".
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ValueError("tag values must be strings or numbers")


Tags = dict[Annotated[str, AfterValidator(_check_key)], Annotated[Any, AfterValidator(_tag_value)]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FirmwareTypeSpec(_Strict):
    version_key: Key
    url_key: Key
    token_key: Optional[Key] = None


class DeviceTypeSpec(_Strict):
    firmware_types: dict[Name, FirmwareTypeSpec] = Field(default_factory=dict)

    @field_validator("firmware_types")
    @classmethod
    def _keys_unique(cls, value: dict[str, FirmwareTypeSpec]) -> dict[str, FirmwareTypeSpec]:
        seen: dict[str, str] = {}
        for name, spec in value.items():
            for key in (spec.version_key, spec.url_key, spec.token_key):
                if key is None:
                    continue
                if key in seen:
                    raise ValueError(f"key {key!r} is used by firmware types {seen[key]!r} and {name!r}")
                seen[key] = name
        return value


class DeviceSpec(_Strict):
    name: Name
    type: Name
    interface: Name
    tags: Tags = Field(default_factory=dict)


class Device(NamedTuple):
    """A validated device of a fleet manifest: a tuple, as an import builds 100k of them."""

    name: str
    type: str
    interface: str
    tags: dict[str, str]


_DEVICE_FIELDS = frozenset(DeviceSpec.model_fields)


def _plain_device(data: Any, known: set) -> Device | None:
    """``data`` as a Device when it is plainly valid, else None: DeviceSpec then says why.

    DeviceSpec is the rule; this applies the same checks (name_problem, key_problem,
    _tag_value) without building a model, which costs most of a large import. ``known``
    holds the names and keys already found valid (types, interfaces, tag keys repeat).
    """
    if type(data) is not dict or not data.keys() <= _DEVICE_FIELDS:
        return None
    name, kind, interface, tags = data.get("name"), data.get("type"), data.get("interface"), data.get("tags", {})
    if type(tags) is not dict or type(name) is not str or name_problem(name):
        return None
    for text in (kind, interface):
        if type(text) is not str:
            return None
        if text not in known:
            if name_problem(text):
                return None
            known.add(text)
    values: dict[str, str] = {}
    for key, value in tags.items():
        if type(key) is not str:
            return None
        if ("key", key) not in known:
            if key_problem(key):
                return None
            known.add(("key", key))
        if type(value) is not str:
            try:
                value = _tag_value(value)
            except ValueError:
                return None
        values[key] = value
    return Device(name, kind, interface, values)  # type: ignore[arg-type]  # both checked as str above


def _device(data: Any, known: set, invalid: Any) -> Device:
    """A validated device; ``invalid(exc)`` makes the error for DeviceSpec's ValidationError."""
    device = _plain_device(data, known)
    if device is None:
        try:
            spec = DeviceSpec.model_validate(data)
        except ValidationError as exc:
            raise invalid(exc) from None
        device = Device(spec.name, spec.type, spec.interface, spec.tags)
    return device


class FleetManifest(_Strict):
    interfaces: dict[Name, dict[str, Any]] = Field(default_factory=dict)
    device_types: dict[Name, DeviceTypeSpec] = Field(default_factory=dict)
    devices: list[DeviceSpec] = Field(default_factory=list)


class Selector(_Strict):
    type: Optional[Name] = None
    tags: Tags = Field(default_factory=dict)


class DeviceSelection(_Strict):
    names: list[Name] = Field(default_factory=list)
    selector: Optional[Selector] = None
    dynamic: bool = Field(False, strict=True)  # devices that come to match later join while it runs
    max_devices: Optional[int] = Field(None, ge=1, le=MAX_COUNT, strict=True)


class ApprovalManifest(_Strict):
    required: int = Field(strict=True, ge=1, le=100)


class FirmwareRef(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Name
    version: str
    allow_downgrade: bool = Field(False, strict=True)
    # Only devices reporting one of these versions (5.0.x, 5.1.*) are updated.
    from_: Optional[list[Annotated[str, AfterValidator(check_pattern)]]] = Field(None, alias="from", min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        # `version: 1.1` is a float to YAML but a version to the user.
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("from_", mode="before")
    @classmethod
    def _patterns_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]
        return value

    def to_spec(self) -> dict[str, Any]:
        """As stored: without the defaults, so that campaigns stored before these
        fields existed compare equal."""
        return self.model_dump(by_alias=True, exclude_defaults=True)


class CanarySelector(_Strict):
    names: list[Name] = Field(default_factory=list)
    type: Optional[Name] = None
    tags: Tags = Field(default_factory=dict)


def _duration(value: Any) -> Any:
    return None if value is None else parse_duration(value)


def _percent(value: Any) -> Any:
    return None if value is None else parse_percent(value)


def _days(value: Any) -> Any:
    if isinstance(value, list) and not value:
        raise ValueError("give at least one day (or leave days out: every day)")
    return value


class WindowManifest(_Strict):
    """A maintenance window (``campaignctl.windows``): days of the week, from start to end."""

    days: Annotated[list[Annotated[Any, AfterValidator(parse_day)]], BeforeValidator(_days)] = Field(
        default_factory=lambda: list(DAYS)
    )
    start: Annotated[Any, AfterValidator(parse_clock)]
    end: Annotated[Any, AfterValidator(lambda v: parse_clock(v, end=True))]

    @field_validator("end")
    @classmethod
    def _not_empty(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("start"):
            raise ValueError(
                f"end equals start ({value}): a window needs a length (an end before the start crosses midnight)"
            )
        return value

    def to_dict(self) -> dict[str, Any]:
        return {"days": list(dict.fromkeys(self.days)), "start": self.start, "end": self.end}


class RolloutManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batches: Optional[list[Any]] = None
    batch_size: Optional[int] = Field(None, ge=1, le=MAX_COUNT, strict=True)
    canary: Optional[CanarySelector] = None
    bake_time: Annotated[Optional[float], BeforeValidator(_duration)] = None
    success_threshold: Annotated[Optional[float], BeforeValidator(_percent)] = None
    error_threshold: Annotated[Optional[float], BeforeValidator(_percent)] = None
    on_error: Literal["pause", "abort", "revert"] = "pause"
    max_per_minute: Optional[int] = Field(None, ge=1, le=MAX_COUNT, strict=True)
    device_timeout: Annotated[Optional[float], BeforeValidator(_duration)] = None
    windows: Optional[list[WindowManifest]] = None
    timezone: Optional[Annotated[str, AfterValidator(check_zone)]] = None
    timezone_tag: Optional[Key] = None

    @field_validator("windows")
    @classmethod
    def _some_windows(cls, value: Optional[list[WindowManifest]]) -> Optional[list[WindowManifest]]:
        if value is not None and not value:
            raise ValueError("give at least one window (or leave windows out: deliveries at any time)")
        return value

    @field_validator("timezone", "timezone_tag")
    @classmethod
    def _with_windows(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        if value is not None and not info.data.get("windows"):
            raise ValueError(f"{info.field_name} is the time zone of maintenance windows: give windows too")
        return value

    @field_validator("batches")
    @classmethod
    def _batches(cls, value: Optional[list[Any]]) -> Optional[list[Any]]:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one batch")
        out: list[int | str] = []
        last = 0.0
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool):
                if item < 1:
                    raise ValueError(f"a batch of {item} devices is empty")
                out.append(check_count(item, "a batch"))
            elif isinstance(item, str) and item.strip().endswith("%"):
                share = parse_percent(item)
                if share <= last:
                    raise ValueError(f"percentages are cumulative and must grow: {item} after {last:.0%}")
                last = share
                out.append(f"{share * 100:g}%")
            else:
                raise ValueError(f"{item!r}: a batch is a number of devices (10) or a cumulative percentage (25%)")
        return out

    @model_validator(mode="after")
    def _one_way(self) -> "RolloutManifest":
        if self.batches is not None and self.batch_size is not None:
            raise ValueError("give batches or batch_size, not both")
        return self

    def to_rollout(self) -> Rollout:
        return Rollout(
            batches=self.batches,
            batch_size=self.batch_size,
            canary=self.canary.model_dump() if self.canary else None,
            bake_time=self.bake_time or 0.0,
            success_threshold=1.0 if self.success_threshold is None else self.success_threshold,
            error_threshold=self.error_threshold,
            on_error=self.on_error,
            max_per_minute=self.max_per_minute,
            device_timeout=self.device_timeout,
            explicit=True,
            windows=[w.to_dict() for w in self.windows] if self.windows else None,
            timezone=self.timezone,
            timezone_tag=self.timezone_tag,
        )


class CampaignManifest(_Strict):
    name: Name
    description: Optional[str] = None
    devices: DeviceSelection
    configurations: dict[Key, Any] = Field(default_factory=dict)
    expected_state: dict[Key, Any] = Field(default_factory=dict)
    firmware: Optional[FirmwareRef] = None
    start_at: Annotated[Optional[str], BeforeValidator(lambda v: None if v is None else parse_time(v))] = None
    rollout: Optional[RolloutManifest] = None
    priority: int = Field(0, strict=True, ge=-1_000_000, le=1_000_000)
    rollback_of: Optional[Name] = None
    end_at: Annotated[Optional[str], BeforeValidator(lambda v: None if v is None else parse_time(v))] = None
    approval: Optional[ApprovalManifest] = None


def _validate(model: type[BaseModel], data: Any, doc: YamlDocument, prefix: tuple = ()) -> Any:
    if data is None:
        raise InputError("the manifest is empty", source=doc.source)
    if not isinstance(data, dict) and not prefix:
        raise InputError(f"the manifest must be a YAML mapping, not {type(data).__name__}", source=doc.source)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _input_error(exc, doc, prefix, model) from None
    except RecursionError:
        raise InputError("a value is nested too deeply", source=doc.source) from None


def _input_error(
    exc: ValidationError, doc: YamlDocument, prefix: tuple = (), model: type[BaseModel] | None = None
) -> InputError:
    """The first of pydantic's errors, in campaignctl's words, at its place in the file;
    an unknown field of ``model`` (or a model inside it) names the closest known one."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))  # drop union tags
    path = prefix + loc
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        msg = "unknown field"
    elif kind == "missing":
        msg = "required field is missing"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif kind in ("model_type", "model_attributes_type"):
        msg = f"input should be a mapping (got {type(err.get('input')).__name__})"
    elif kind.endswith("_type"):
        msg = f"{msg[0].lower()}{msg[1:]} (got {type(err.get('input')).__name__})"
    if kind == "extra_forbidden" and loc and isinstance(loc[-1], str) and len(loc) >= 1:
        msg = f"unknown field {loc[-1]!r}"
        if model is not None:
            msg += did_you_mean(loc[-1], _field_names_at(model, loc[:-1]))
    if msg[:1].isupper() and msg[1:2].islower():  # pydantic's "Input should be..." in our style
        msg = msg[0].lower() + msg[1:]
    return doc.error(msg, path)


def _field_names_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names (as written in a manifest: aliases) of the model(s) found at
    ``loc`` inside ``model``, through optional, list and mapping fields (whose indexes
    and keys in ``loc`` are stepped over)."""
    models = [model]
    for step in loc:
        inner = [
            found
            for m in models
            for name, f in m.model_fields.items()
            if step in (name, f.alias)
            for found in _models_in(f.annotation)
        ]
        if inner:
            models = inner
    return [f.alias or name for m in models for name, f in m.model_fields.items()]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds: ``Optional[M]``, ``list[M]``, ``dict[str, M]``…"""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def load_fleet(path: str, environ: dict[str, str] | None = None) -> "Fleet":
    """Read a fleet manifest: YAML (interfaces, device types, devices) or CSV (devices only).
    Interface settings may refer to the environment (``environ``, default ``os.environ``):
    ``${VAR}``, ``${VAR:-default}``."""
    text = read_text(path)
    if path.lower().endswith(".csv"):
        devices, lines = _parse_csv(text, path)
        return Fleet(interfaces={}, device_types={}, devices=devices, lines=lines)
    doc = YamlDocument(text, path)
    data = doc.data
    raw_devices = data.get("devices") if isinstance(data, dict) else None
    if isinstance(raw_devices, list):
        # The devices are most of a large manifest: validated on their own, quicker (_device).
        manifest: FleetManifest = _validate(FleetManifest, {k: v for k, v in data.items() if k != "devices"}, doc)
        known: set = set()
        devices = [
            _device(item, known, lambda exc, i=index: _input_error(exc, doc, ("devices", i), DeviceSpec))
            for index, item in enumerate(raw_devices)
        ]
    else:
        manifest = _validate(FleetManifest, data, doc)
        devices = [Device(d.name, d.type, d.interface, d.tags) for d in manifest.devices]
    validated_interfaces: dict[str, dict[str, Any]] = {}
    for name, raw in manifest.interfaces.items():
        validated_interfaces[name] = _validate_interface(raw, doc, ("interfaces", name), environ)
    seen: dict[str, int] = {}
    for index, device in enumerate(devices):
        if device.name in seen:
            raise doc.error(
                f"device {device.name!r} is listed twice (also at devices[{seen[device.name]}])",
                ("devices", index, "name"),
            )
        seen[device.name] = index
    return Fleet(interfaces=validated_interfaces, device_types=manifest.device_types, devices=devices, doc=doc)


def _validate_interface(
    raw: dict[str, Any], doc: YamlDocument, path: tuple, environ: dict[str, str] | None = None
) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise doc.error("an interface is a mapping with a 'type' and its settings", path)
    kind = raw.get("type")
    if kind not in interfaces.TYPES:
        raise doc.error(f"type must be one of {', '.join(interfaces.TYPES)}, not {kind!r}", path + ("type",))
    settings_model = interfaces.settings_model(kind)
    settings = {}
    for key, value in raw.items():
        if key == "type":
            continue
        try:
            settings[key] = _expand(value, environ)[0]
        except MissingVariable as exc:
            raise doc.error(_unset(exc), path + (key,)) from None
    validated = _validate(settings_model, settings, doc, path)
    return {"type": kind, "settings": validated.model_dump(exclude_none=True)}


@dataclass
class Fleet:
    interfaces: dict[str, dict[str, Any]]
    device_types: dict[str, DeviceTypeSpec]
    devices: list[Device]
    doc: YamlDocument | None = None
    # CSV: line number of each device, for errors about references.
    lines: dict[int, int] = field(default_factory=dict)

    def error(self, message: str, index: int, fieldname: str, source: str) -> InputError:
        if self.doc is not None:
            return self.doc.error(message, ("devices", index, fieldname))
        return InputError(message, source=source, field=fieldname, line=self.lines.get(index))


CSV_COLUMNS = ("name", "type", "interface", "tags")


def _parse_csv(text: str, source: str) -> tuple[list[Device], dict[int, int]]:
    """The devices of a CSV file, and the line each one stands on."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise InputError(f"not valid CSV: {exc}", source=source, line=1) from None
    _check_header(header, source)
    columns = {column: header.index(column) for column in header}
    at_name, at_type, at_interface, at_tags = (columns.get(c) for c in CSV_COLUMNS)
    width = len(header)
    devices: list[Device] = []
    lines: dict[int, int] = {}
    seen: dict[str, int] = {}
    known: set = set()
    cells: dict[str, dict[str, str]] = {}  # tags cell -> its tags: devices share a few tag sets
    line = 1
    try:
        for row in reader:
            line = reader.line_num
            if not row:
                continue  # a blank line, as DictReader skips it
            if len(row) > width:
                raise InputError("more fields than columns", source=source, line=line)
            row += [""] * (width - len(row))
            cell = row[at_tags] if at_tags is not None else ""
            tags = cells.get(cell)
            if tags is None:
                tags = cells[cell] = _csv_tags(cell, source, line)
            # The header check made sure these three columns exist.
            data = {"name": row[at_name], "type": row[at_type], "interface": row[at_interface], "tags": tags}  # type: ignore[index]
            device = _device(data, known, lambda exc, line=line: _csv_error(exc, source, line))
            if device.name in seen:
                raise InputError(
                    f"device {device.name!r} is listed twice (also on line {seen[device.name]})",
                    source=source,
                    field="name",
                    line=line,
                )
            seen[device.name] = line
            lines[len(devices)] = line
            devices.append(device)
    except csv.Error as exc:
        raise InputError(f"not valid CSV: {exc}", source=source, line=reader.line_num) from None
    return devices, lines


def _check_header(header: list[str], source: str) -> None:
    missing = [c for c in CSV_COLUMNS[:3] if c not in header]
    unknown = [c for c in header if c not in CSV_COLUMNS]
    twice = sorted({c for c in header if header.count(c) > 1})
    if missing or unknown or twice:
        problem = "; ".join(
            p
            for p in (
                f"missing column(s) {', '.join(missing)}" if missing else "",
                f"unknown column(s) {', '.join(unknown)}" if unknown else "",
                f"column(s) given twice: {', '.join(twice)}" if twice else "",
            )
            if p
        )
        raise InputError(f"{problem} (expected header: {','.join(CSV_COLUMNS)})", source=source, line=1)


def _csv_tags(text: str, source: str, line: int) -> dict[str, str]:
    """``k=v;k2=v2`` → a dict; a key given twice is an error, not "the last one wins"."""
    tags: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        k, sep, v = part.partition("=")
        if not sep:
            raise InputError(f"tag {part!r} is not written k=v", source=source, field="tags", line=line)
        k = k.strip()
        if k in tags:
            raise InputError(f"tag {k!r} is given twice", source=source, field="tags", line=line)
        tags[k] = v.strip()
    return tags


def _csv_error(exc: ValidationError, source: str, line: int) -> InputError:
    err = exc.errors(include_url=False)[0]
    msg = err["msg"].removeprefix("Value error, ")
    return InputError(msg, source=source, field=format_path(err["loc"]), line=line)


def _check_dynamic(manifest: CampaignManifest, doc: YamlDocument) -> None:
    """``dynamic``, ``max_devices`` and ``end_at`` make sense only together, and only
    with a selector: devices named one by one never come to match later."""
    devices = manifest.devices
    if devices.dynamic and devices.selector is None:
        raise doc.error("dynamic: true needs a selector (devices that come to match it join)", ("devices", "dynamic"))
    if devices.dynamic and manifest.rollback_of:
        raise doc.error("a rollback cannot be dynamic: it puts back what one job wrote", ("devices", "dynamic"))
    if devices.max_devices is not None and not devices.dynamic:
        raise doc.error("max_devices caps a dynamic campaign: it needs dynamic: true", ("devices", "max_devices"))
    if manifest.end_at is not None and not devices.dynamic:
        raise doc.error("end_at ends the admissions of a dynamic campaign: it needs devices.dynamic: true", ("end_at",))
    if manifest.end_at is not None and manifest.start_at is not None and manifest.end_at <= manifest.start_at:
        raise doc.error(f"end_at must come after start_at ({manifest.start_at})", ("end_at",))


def load_campaign(path: str, environ: dict[str, str] | None = None) -> CampaignSpec:
    return parse_campaign(read_text(path), path, environ)


def parse_campaign(text: str, source: str, environ: dict[str, str] | None = None) -> CampaignSpec:
    """A campaign manifest given as text (YAML, or JSON, which YAML reads as well), from
    a file, the operator API or the web front-end: errors name ``source``."""
    path = source
    doc = YamlDocument(text, path)
    manifest: CampaignManifest = _validate(CampaignManifest, doc.data, doc)
    if not manifest.devices.names and manifest.devices.selector is None:
        raise doc.error("select devices with names and/or a selector", ("devices",))
    _check_dynamic(manifest, doc)
    if not (manifest.configurations or manifest.expected_state or manifest.firmware or manifest.rollback_of):
        raise doc.error("a campaign needs configurations, expected_state, a firmware or rollback_of", ())
    secret_keys: list[str] = []
    values: dict[str, dict[str, Any]] = {}
    for section in ("configurations", "expected_state"):
        values[section] = {}
        for key, value in getattr(manifest, section).items():
            try:
                expanded, secret = _expand(value, environ)
                canonical(expanded)
            except MissingVariable as exc:
                raise doc.error(_unset(exc), (section, key)) from None
            except (ValueError, TypeError) as exc:
                raise doc.error(f"not a JSON value ({exc})", (section, key)) from None
            except RecursionError:
                raise doc.error("the value is nested too deeply", (section, key)) from None
            values[section][key] = expanded
            if secret:
                secret_keys.append(f"{section}.{key}")
    return CampaignSpec(
        name=manifest.name,
        description=manifest.description,
        names=list(dict.fromkeys(manifest.devices.names)),
        selector=manifest.devices.selector.model_dump() if manifest.devices.selector else None,
        configurations=values["configurations"],
        expected_state=values["expected_state"],
        firmware=manifest.firmware.to_spec() if manifest.firmware else None,
        secret_keys=secret_keys,
        start_at=manifest.start_at,
        rollout=manifest.rollout.to_rollout().to_dict() if manifest.rollout else None,
        priority=manifest.priority,
        rollback_of=manifest.rollback_of,
        dynamic=manifest.devices.dynamic,
        max_devices=manifest.devices.max_devices,
        end_at=manifest.end_at,
        approval=manifest.approval.model_dump() if manifest.approval else None,
        source=path,
        text=text,
    )


def _unset(exc: MissingVariable) -> str:
    return f"environment variable {exc.args[0]} is not set"


def _expand(value: Any, environ: dict[str, str] | None) -> tuple[Any, bool]:
    """Expand ``${VAR}`` in every string of a (nested) value; report whether any was used.

    YAML dates (``expires: 2024-01-01``) become their ISO text: JSON has no dates.
    """
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat(), False
    if isinstance(value, str):
        return expand_env(value, environ)
    if isinstance(value, list):
        pairs = [_expand(v, environ) for v in value]
        return [v for v, _ in pairs], any(s for _, s in pairs)
    if isinstance(value, dict):
        items = {k: _expand(v, environ) for k, v in value.items()}
        return {k: v for k, (v, _) in items.items()}, any(s for _, s in items.values())
    return value, False
