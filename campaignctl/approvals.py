"""Approvals: a campaign whose manifest says ``approval: {required: N}`` starts (at its
launch, or when its ``start_at`` comes) only once N distinct people have approved it and
nobody has rejected it.

One verdict per person and campaign (the table's key): a person's later approval, or a
rejection after an approval, replaces their earlier verdict, so the same person
approving twice counts once. A rejection is not taken back by its author approving: it
stands until the campaign is changed with ``apply``, which voids every verdict (the
people approved what they read, not what it became). Verdicts are given while the
campaign has not started (a draft, or scheduled); each is recorded in the audit trail
in the transaction that stores it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from campaignctl import audit, db
from campaignctl.errors import ConflictError, InputError
from campaignctl.values import check_text

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from campaignctl.spec import CampaignSpec

APPROVE, REJECT = "approve", "reject"
#: Longest comment kept: it is shown in status, next to the others.
MAX_COMMENT = 1000
#: Campaigns that have not started: the only ones a verdict still decides on.
UNSTARTED = ("draft", "scheduled")


class NotApproved(ConflictError):
    """A campaign that may not start yet for want of approvals (or for a rejection)."""


def required(spec: "CampaignSpec") -> int:
    """Approvals the campaign needs before it starts (0: none asked for)."""
    return int((spec.approval or {}).get("required", 0))


def verdicts(conn: "Connection", campaign_id: int) -> list[dict[str, Any]]:
    """Every person's verdict on the campaign, oldest first."""
    return [
        {"actor": r[0], "verdict": r[1], "comment": r[2], "at": r[3]}
        for r in db.run(
            conn,
            "SELECT actor, verdict, comment, at FROM approval WHERE campaign_id = :id ORDER BY at, actor",
            {"id": campaign_id},
        )
    ]


def state(conn: "Connection", campaign_id: int, spec: "CampaignSpec") -> dict[str, Any] | None:
    """What ``show`` and ``status`` list: ``{"required", "approved", "missing",
    "rejected", "verdicts"}``; None for a campaign that asks for no approval."""
    needed = required(spec)
    if not needed:
        return None
    given = verdicts(conn, campaign_id)
    approved = sum(1 for v in given if v["verdict"] == APPROVE)
    return {
        "required": needed,
        "approved": approved,
        "missing": max(0, needed - approved),
        "rejected": [v["actor"] for v in given if v["verdict"] == REJECT],
        "verdicts": given,
    }


def blocker(found: dict[str, Any] | None) -> str | None:
    """Why a campaign may not start yet, or None when its approvals allow it."""
    if found is None:
        return None
    rejections = [v for v in found["verdicts"] if v["verdict"] == REJECT]
    if rejections:
        return "rejected by " + "; ".join(f"{v['actor']} ({v['comment']})" for v in rejections)
    if found["missing"]:
        approvers = [v["actor"] for v in found["verdicts"] if v["verdict"] == APPROVE]
        return f"needs {missing_text(found['missing'])}" + (
            f" (approved by {', '.join(approvers)}: {found['approved']} of {found['required']})" if approvers else ""
        )
    return None


def missing_text(count: int) -> str:
    return f"{count} more approval{'s' if count != 1 else ''}"


def require(conn: "Connection", row: Any, spec: "CampaignSpec") -> None:
    """Refuse (``NotApproved``) to start a campaign whose approvals are missing or that
    was rejected; nothing is written, so a refused launch leaves the database as it was
    and a due scheduled campaign stays scheduled."""
    found = state(conn, row.id, spec)
    why = blocker(found)
    if why is not None:
        assert found is not None
        hint = (
            "a changed manifest applied voids every verdict"
            if found["rejected"]
            else f"each approver runs campaignctl approve {row.name}"
        )
        raise NotApproved(f"campaign {row.name!r} cannot start: {why} ({hint})")


def check_comment(comment: str | None, verdict: str) -> str | None:
    """A comment as stored: stripped, printable storable text, short; required for a
    rejection (the people who approved need to know why)."""
    text = (comment or "").strip()
    if not text:
        if verdict == REJECT:
            raise InputError("a rejection needs a reason", field="--comment")
        return None
    check_text(text, "--comment")
    if len(text) > MAX_COMMENT or "\x00" in text:
        raise InputError(f"at most {MAX_COMMENT} characters, without NUL", field="--comment")
    return text


def give(engine: "Engine", name: str, verdict: str, comment: str | None = None) -> dict[str, Any]:
    """Record the acting person's verdict (``audit.actor()``) on a campaign that has not
    started; returns its approvals as ``state`` gives them, with ``"actor"``."""
    from campaignctl.campaigns import get_spec

    assert verdict in (APPROVE, REJECT), verdict
    text = check_comment(comment, verdict)
    who = audit.actor()
    stamp = db.utcnow()
    with db.write(engine) as conn:
        # Locked: a launch deciding on the approvals waits for this verdict, or this
        # verdict finds the campaign started.
        row, spec = get_spec(conn, name, lock=True)
        if not required(spec):
            raise ConflictError(f"campaign {name!r} asks for no approval (its manifest has no `approval`)")
        if row.status not in UNSTARTED:
            raise ConflictError(
                f"campaign {name!r} is {row.status}: verdicts are given before a campaign starts "
                f"({verdict} it while it is a draft or scheduled)"
            )
        previous = db.run(
            conn,
            "SELECT verdict, at FROM approval WHERE campaign_id = :id AND actor = :actor",
            {"id": row.id, "actor": who},
        ).first()
        if previous is not None and previous[0] == REJECT and verdict == APPROVE:
            raise ConflictError(
                f"{who} rejected campaign {name!r} at {previous[1]}: a rejection cannot be turned into an "
                "approval; it stands until the campaign is changed with apply, which voids every verdict"
            )
        db.run(
            conn,
            "INSERT INTO approval (campaign_id, actor, verdict, comment, at) "
            "VALUES (:id, :actor, :verdict, :comment, :at) "
            "ON CONFLICT (campaign_id, actor) DO UPDATE SET verdict = excluded.verdict, "
            "comment = excluded.comment, at = excluded.at",
            {"id": row.id, "actor": who, "verdict": verdict, "comment": text, "at": stamp},
        )
        found = state(conn, row.id, spec)
        assert found is not None
        audit.record(
            conn,
            "campaign.approved" if verdict == APPROVE else "campaign.rejected",
            campaign=name,
            details={
                "comment": text,
                "required": found["required"],
                "approved": found["approved"],
                "again": previous is not None,
            },
            by=who,
            at=stamp,
        )
    return {**found, "actor": who}


def void(conn: "Connection", campaign_id: int, name: str) -> int:
    """Drop every verdict on a campaign that was just changed, in the caller's
    transaction (the change's own), and record how many were voided."""
    count = db.run(conn, "DELETE FROM approval WHERE campaign_id = :id", {"id": campaign_id}).rowcount
    if count:
        audit.record(conn, "approvals.voided", campaign=name, details={"count": count})
    return count
