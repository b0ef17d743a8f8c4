"""A validated campaign definition, as stored in the database (no validation library needed
to read it back, which keeps ``status`` quick)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from campaignctl import db
from campaignctl.values import canonical


@dataclass
class CampaignSpec:
    """A validated campaign manifest, with ``${VAR}`` expanded."""

    name: str
    description: str | None
    names: list[str]
    selector: dict[str, Any] | None
    configurations: dict[str, Any]
    expected_state: dict[str, Any]
    firmware: dict[str, Any] | None  # type, version; allow_downgrade, from
    secret_keys: list[str] = field(default_factory=list)  # "configurations.<key>" / "expected_state.<key>"
    start_at: str | None = None  # UTC ISO 8601: the campaign starts by itself then
    rollout: dict[str, Any] | None = None  # campaignctl.rollout.Rollout, as a dict
    priority: int = 0  # of two campaigns setting a key on a device, the higher one wins
    rollback_of: str | None = None  # puts back the values this campaign's job overwrote
    # Devices that come to match the selector while the campaign runs join it, up to
    # max_devices in all, until end_at (UTC ISO 8601).
    dynamic: bool = False
    max_devices: int | None = None
    end_at: str | None = None
    approval: dict[str, Any] | None = None  # {"required": N}: approvals needed before launch
    source: str = "<manifest>"
    text: str | None = field(default=None, repr=False)  # the manifest, for errors found later

    def to_json(self) -> str:
        # Fields added since the first release are written only when set, so that a
        # campaign stored before them compares equal to the same manifest applied again.
        devices: dict[str, Any] = {"names": self.names, "selector": self.selector}
        if self.dynamic:
            devices["dynamic"] = True
        if self.max_devices is not None:
            devices["max_devices"] = self.max_devices
        later = {
            key: value for key, value in (("end_at", self.end_at), ("approval", self.approval)) if value is not None
        }
        return canonical(
            {
                **later,
                "name": self.name,
                "description": self.description,
                "devices": devices,
                "configurations": self.configurations,
                "expected_state": self.expected_state,
                "firmware": self.firmware,
                "start_at": self.start_at,
                "rollout": self.rollout,
                "priority": self.priority,
                "rollback_of": self.rollback_of,
            }
        )

    @classmethod
    def from_json(cls, text: str, secret_keys: list[str]) -> "CampaignSpec":
        data = db.loads(text, dict)
        try:
            return cls._from_dict(data, secret_keys)
        except (KeyError, TypeError, AttributeError) as exc:  # valid JSON, but not a spec campaignctl wrote
            raise db.UnreadableData(f"a campaign's definition lacks {exc}") from None

    @classmethod
    def _from_dict(cls, data: Any, secret_keys: list[str]) -> "CampaignSpec":
        return cls(
            name=data["name"],
            description=data["description"],
            names=data["devices"]["names"],
            selector=data["devices"]["selector"],
            configurations=data["configurations"],
            expected_state=data["expected_state"],
            firmware=data["firmware"],
            secret_keys=secret_keys,
            start_at=data.get("start_at"),
            rollout=data.get("rollout"),
            priority=data.get("priority", 0),
            rollback_of=data.get("rollback_of"),
            dynamic=data["devices"].get("dynamic", False),
            max_devices=data["devices"].get("max_devices"),
            end_at=data.get("end_at"),
            approval=data.get("approval"),
        )
