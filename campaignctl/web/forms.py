"""The new-campaign form: its fields to a campaign manifest (validated by
``campaignctl.manifests.parse_campaign``, as a file would be), and a stored draft back
to fields for editing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from campaignctl.api import digits
from campaignctl.errors import InputError

#: Digits of a number the form passes on as a number; a longer one (or ``²``, which
#: ``str.isdigit`` takes and ``int`` refuses) goes to the manifest's validation as the
#: text typed, which says what is wrong with it.
MAX_DIGITS = 18
#: Fields of the rollout settings, in the manifest's names.
ROLLOUT_FIELDS = ("batches", "batch_size", "bake_time", "success_threshold", "error_threshold", "device_timeout")


@dataclass
class CampaignForm:
    """What the form holds (texts as typed), to build a manifest or to show again."""

    name: str = ""
    description: str = ""
    select: str = "selector"  # "names" or "selector"
    names: str = ""
    device_type: str = ""
    tags: str = ""
    configurations: list[tuple[str, str]] = field(default_factory=list)
    expected_state: list[tuple[str, str]] = field(default_factory=list)
    firmware: str = ""  # "firmware type|version" or ""
    allow_downgrade: bool = False
    rollout: dict[str, str] = field(default_factory=dict)
    on_error: str = "pause"

    @classmethod
    def from_fields(cls, fields: dict[str, list[str]]) -> "CampaignForm":
        def one(name: str) -> str:
            return (fields.get(name) or [""])[0].strip()

        def rows(prefix: str) -> list[tuple[str, str]]:
            keys, values = fields.get(f"{prefix}_key", []), fields.get(f"{prefix}_value", [])
            values = values + [""] * (len(keys) - len(values))
            return [(k.strip(), v.strip()) for k, v in zip(keys, values) if k.strip() or v.strip()]

        return cls(
            name=one("name"),
            description=one("description"),
            select="names" if one("select") == "names" else "selector",
            names=one("names"),
            device_type=one("device_type"),
            tags=one("tags"),
            configurations=rows("cfg"),
            expected_state=rows("exp"),
            firmware=one("firmware"),
            allow_downgrade=one("allow_downgrade") == "on",
            rollout={k: one(k) for k in ROLLOUT_FIELDS if one(k)},
            on_error=one("on_error") or "pause",
        )

    @classmethod
    def from_campaign(cls, shown: dict[str, Any]) -> "CampaignForm":
        """A stored draft (``campaigns.show``) as the form shows it for editing."""
        devices = shown["devices"]
        selector = devices["selector"] or {}
        rollout = shown["rollout"] or {}
        firmware = shown["firmware"] or {}
        return cls(
            name=shown["name"],
            description=shown["description"] or "",
            select="names" if devices["names"] else "selector",
            names="\n".join(devices["names"]),
            device_type=selector.get("type") or "",
            tags="\n".join(f"{k}={v}" for k, v in sorted((selector.get("tags") or {}).items())),
            configurations=[(k, _text(v)) for k, v in shown["configurations"].items()],
            expected_state=[(k, _text(v)) for k, v in shown["expected_state"].items()],
            firmware=f"{firmware['type']}|{firmware['version']}" if firmware else "",
            allow_downgrade=bool(firmware.get("allow_downgrade")),
            rollout=_rollout_fields(rollout),
            on_error=rollout.get("on_error") or "pause",
        )

    def manifest(self) -> dict[str, Any]:
        """The campaign manifest these fields stand for. Only the form's own shape is
        checked here (a tag line without ``=``, a value without a key); everything else
        is left to the manifest's validation, so that the form and a file are judged alike."""
        manifest: dict[str, Any] = {"name": self.name}
        if self.description:
            manifest["description"] = self.description
        if self.select == "names":
            manifest["devices"] = {"names": _split(self.names)}
        else:
            selector: dict[str, Any] = {}
            if self.device_type:
                selector["type"] = self.device_type
            tags = _tags(self.tags)
            if tags:
                selector["tags"] = tags
            manifest["devices"] = {"selector": selector}
        for section, rows in (("configurations", self.configurations), ("expected_state", self.expected_state)):
            if rows:
                manifest[section] = _values(section, rows)
        if self.firmware:
            fw_type, _, version = self.firmware.partition("|")
            manifest["firmware"] = {"type": fw_type, "version": version}
            if self.allow_downgrade:
                manifest["firmware"]["allow_downgrade"] = True
        rollout: dict[str, Any] = {}
        for key, text in self.rollout.items():
            rollout[key] = _rollout_value(key, text)
        if rollout or self.on_error != "pause":
            rollout["on_error"] = self.on_error
            manifest["rollout"] = rollout
        return manifest


def _split(text: str) -> list[str]:
    """Device names, one per line or separated by commas or spaces."""
    return [n for n in text.replace(",", " ").split() if n]


def _tags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for number, line in enumerate(text.replace(",", "\n").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise InputError(f"tag {number}: write key=value, not {line.strip()!r}", field="devices.selector.tags")
        tags[key.strip()] = value.strip()
    return tags


def parse_value(text: str) -> Any:
    """A value as typed: JSON when it reads as JSON (60, true, "1.1", [1, 2], {...}),
    else the text itself (eco, 1.1.0), also when it nests too deeply to be read."""
    from campaignctl.values import loads

    try:
        return loads(text)
    except ValueError:  # not JSON, too deep (TooDeep), or a number too long for Python
        return text


def _text(value: Any) -> str:
    """A value as the form shows it: text as it is, unless it would read back as
    something else (``"60"`` stays quoted); anything else as JSON."""
    if isinstance(value, str) and parse_value(value) == value:
        return value
    return json.dumps(value, ensure_ascii=False)


def _values(section: str, rows: list[tuple[str, str]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for number, (key, text) in enumerate(rows, 1):
        if not key:
            raise InputError(f"row {number} has a value but no key", field=section)
        if key in values:
            raise InputError(f"key {key!r} is given twice", field=f"{section}.{key}")
        values[key] = parse_value(text)
    return values


def _rollout_value(key: str, text: str) -> Any:
    if key == "batches":
        return [_number(b) for b in text.replace(",", " ").split()]
    if key == "batch_size":
        return _number(text)
    return text


def _number(text: str) -> int | str:
    return int(text) if digits(text) and len(text) <= MAX_DIGITS else text


def _rollout_fields(rollout: dict[str, Any]) -> dict[str, str]:
    """A stored rollout (``Rollout.to_dict``) back to the form's texts."""
    from campaignctl.rollout import format_duration

    fields: dict[str, str] = {}
    if rollout.get("batches"):
        fields["batches"] = ", ".join(str(b) for b in rollout["batches"])
    if rollout.get("batch_size"):
        fields["batch_size"] = str(rollout["batch_size"])
    for key in ("bake_time", "device_timeout"):
        if rollout.get(key):
            fields[key] = format_duration(rollout[key])
    for key, default in (("success_threshold", 1.0), ("error_threshold", None)):
        value = rollout.get(key)
        if value is not None and value != default:
            fields[key] = f"{value * 100:g}%"
    return fields
