"""What each page of the front-end shows: plain data from the library calls the CLI
makes (run in a worker thread, as the operator, through ``api.call``), for the
templates to render."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from campaignctl import api, control, db, fleet, summaries
from campaignctl import campaigns as campaign_lib
from campaignctl import jobs as job_lib
from campaignctl.cli.common import fmt_value, short_time
from campaignctl.errors import CampaignctlError, InputError
from campaignctl.rollout import Rollout
from campaignctl.supervision import DEVICE_STATES, open_status, writer_name
from campaignctl.web import chart
from campaignctl.web.forms import CampaignForm

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: The summary bar's segments, in this order: the outcomes first, then the rest.
BAR_STATES = (
    "valid",
    "waiting",
    "invalid",
    "failed",
    "timed_out",
    "pending",
    "syncing",
    "cancelled",
    "skipped",
    "superseded",
)
STATUS_COLORS = {
    "valid": "#2e9e44",
    "waiting": "#e0a800",
    "invalid": "#a23bbf",
    "failed": "#d6333b",
    "timed_out": "#8c1c22",
    "pending": "#b8bfc7",
    "syncing": "#3b8fd6",
    "cancelled": "#6c757d",
    "skipped": "#d0d4d9",
    "superseded": "#5a6fd6",
    "undelivered": "#b8bfc7",
    "delivered": "#2e9e44",
}
#: The campaign list's bar: the supervision states of the campaign page's bar, the
#: outcomes first (every status a device can be in, so that the segments fill the bar).
LIST_STATES = BAR_STATES
#: Campaigns per page of the campaign list: each launched one shown costs its
#: supervision aggregate when its cached totals expire (``campaignctl.summaries``).
LIST_SIZE = 25
#: Campaign statuses during which pages keep refreshing.
LIVE = summaries.ACTIVE_STATUSES
#: Devices per page of a campaign's device table.
PAGE_SIZE = 50


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "–"


#: The templates' filters: times and values as the CLI's tables show them.
FILTERS: dict[str, Callable[..., Any]] = {"when": short_time, "value": fmt_value, "percent": percent}


def bar(summary: dict[str, int], width: int = 240, states: tuple[str, ...] = BAR_STATES) -> list[dict[str, Any]]:
    """The summary bar's segments: x, width and count per status (an SVG, drawn from
    numbers only)."""
    total = summary.get("total") or 0
    segments, x = [], 0.0
    for state in states:
        count = summary.get(state, 0)
        if not count or not total:
            continue
        w = width * count / total
        segments.append({"state": state, "x": round(x, 2), "w": round(w, 2), "count": count})
        x += w
    return segments


def campaigns(engine: "Engine", number: int = 1) -> dict[str, Any]:
    """Page ``number`` of the campaign list: per launched campaign its supervision
    totals, as its page counts them (cached: ``campaignctl.summaries``); a draft's
    devices are not resolved here (its page counts them)."""
    listed = campaign_lib.list_campaigns(engine)
    shown = listed[(number - 1) * LIST_SIZE : number * LIST_SIZE]
    counted = summaries.shared(engine).totals(engine, {r["job"]["id"]: r["status"] for r in shown if r["job"]})
    rows = []
    for row in shown:
        summary = _summary(counted[row["job"]["id"]]) if row["job"] else None
        rows.append({**row, "summary": summary, "bar": bar(summary, states=LIST_STATES) if summary else []})
    return {
        "campaigns": rows,
        "live": any(r["status"] in LIVE for r in rows),
        "page": number,
        "more": len(listed) > number * LIST_SIZE,
        "count": len(listed),
    }


def _summary(counts: dict[str, int]) -> dict[str, int]:
    """The campaign page's summary of supervision totals: the total is every device
    counted (a dynamic campaign's grow as devices join)."""
    return {"total": sum(counts.values()), **counts}


def campaign(engine: "Engine", name: str, query: dict[str, Any]) -> dict[str, Any]:
    shown = campaign_lib.show(engine, name)
    only = {query["status"]} if query["status"] in DEVICE_STATES else None
    offset = (query["page"] - 1) * PAGE_SIZE
    # One more row than shown: whether there is a next page. The database skips the
    # rows before the page (and, searching, the names that do not match).
    with open_status(
        engine, name, only=only, limit=PAGE_SIZE + 1, offset=offset, name_contains=query["q"] or None
    ) as status:
        devices = list(status["devices"])
        data = {k: v for k, v in status.items() if k != "devices"}
    more = len(devices) > PAGE_SIZE
    summary = data["summary"]
    convergence = None
    if data["job"] is not None and data["job"]["created_at"]:
        with db.read(engine) as conn:
            found = chart.convergence(conn, data["job"]["id"], data["job"]["created_at"], summary["total"])
        convergence = found.svg()
    rollout = Rollout.from_dict(shown["rollout"]) if shown["rollout"] else None
    return {
        "campaign": shown,
        "status": data,
        "summary": summary,
        "bar": bar(summary, 600),
        "batches": data["batches"],
        "rollout": rollout.describe() if rollout else "all devices at once",
        "thresholds": _thresholds(rollout),
        "chart": convergence,
        "devices": devices[:PAGE_SIZE],
        "query": query,
        "states": DEVICE_STATES,
        "page": query["page"],
        "more": more,
        "live": data["status"] in LIVE,
        "actions": _actions(data["status"], summary),
        "editable": _editable(engine, name) if shown["status"] == "draft" else None,
    }


def _thresholds(rollout: Rollout | None) -> str:
    if rollout is None:
        return "none"
    parts = [f"success ≥ {rollout.success_threshold:.0%}"]
    if rollout.error_threshold is not None:
        parts.append(f"errors ≥ {rollout.error_threshold:.0%} → {rollout.on_error}")
    if rollout.bake_time:
        from campaignctl.rollout import format_duration

        parts.append(f"bake {format_duration(rollout.bake_time)}")
    return ", ".join(parts)


def _actions(status: str, summary: dict[str, int]) -> list[str]:
    """The buttons a campaign in this status offers (the library refuses the others anyway)."""
    actions = {
        "draft": ["launch", "delete"],
        # ``pause`` takes a running campaign only (docs/commands.md): a scheduled one is
        # cancelled, or its start put off with apply before launch.
        "scheduled": ["cancel"],
        "running": ["pause", "cancel"],
        "paused": ["resume", "cancel"],
        "completed": [],
    }.get(status, [])
    if status in ("running", "completed") and summary.get("failed"):
        actions.append("retry")
    return actions


def _editable(engine: "Engine", name: str) -> str | None:
    """Why the form cannot edit this draft (None: it can): settings the form does not
    have would be lost, and secret values are never shown to be edited."""
    with db.read(engine) as conn:
        _row, spec = campaign_lib.get_spec(conn, name)
    rollout = spec.rollout or {}
    if spec.secret_keys:
        return "it has secret values (${VAR})"
    unsupported = [
        label
        for label, present in (
            ("start_at", spec.start_at),
            ("priority", spec.priority),
            ("rollback_of", spec.rollback_of),
            ("dynamic devices", spec.dynamic or spec.max_devices or spec.end_at),
            ("approval", spec.approval),
            ("firmware.from", (spec.firmware or {}).get("from")),
            ("both names and a selector", spec.names and spec.selector),
            ("canary", rollout.get("canary")),
            ("max_per_minute", rollout.get("max_per_minute")),
            ("windows", rollout.get("windows")),
        )
        if present
    ]
    return f"it uses {', '.join(unsupported)}" if unsupported else None


def save_campaign(engine: "Engine", form: CampaignForm, editing: bool) -> str:
    """Validate the form's manifest as ``create``/``apply`` validate a file, then the
    same library call; nothing is saved when anything is wrong."""
    from campaignctl.manifests import parse_campaign

    spec = parse_campaign(json.dumps(form.manifest(), ensure_ascii=False), source="form", environ={})
    if editing:
        problem = _editable(engine, spec.name)
        if problem:
            raise InputError(f"this draft cannot be edited here: {problem}; use campaignctl apply")
        return campaign_lib.apply(engine, spec).action
    return campaign_lib.create(engine, spec).action


def form_page(
    engine: "Engine", form: CampaignForm, editing: str | None, error: CampaignctlError | None
) -> dict[str, Any]:
    types = fleet.device_type_names(engine)
    message = field = None
    if error is not None:
        field = getattr(error, "field", None)
        message = getattr(error, "detail", None) or error.message
    return {
        "form": form,
        "editing": editing,
        "device_types": types,
        "firmwares": firmware_options(engine, form.device_type) if form.device_type else [],
        "error": message,
        "error_field": field,
        "count": count_devices(engine, form),
    }


def edit_page(engine: "Engine", name: str) -> dict[str, Any]:
    shown = campaign_lib.show(engine, name)
    if shown["status"] != "draft":
        raise CampaignctlError(f"campaign {name!r} was launched ({shown['status']}): it can no longer be changed")
    problem = _editable(engine, name)
    if problem:
        raise CampaignctlError(f"campaign {name!r} cannot be edited here: {problem}; use campaignctl apply")
    return form_page(engine, CampaignForm.from_campaign(shown), name, None)


def count_devices(engine: "Engine", form: CampaignForm) -> dict[str, Any]:
    """How many devices the form's selection matches now, or why it matches none:
    names as a campaign resolves them (``campaigns.resolve_devices``: every name must
    exist), a selector counted by the database (``fleet.count_devices``), as many
    devices as it matches."""
    from campaignctl.campaigns import fail_stored, resolve_devices
    from campaignctl.spec import CampaignSpec

    try:
        devices = form.manifest()["devices"]
        selector = devices.get("selector")
        if selector is not None:
            count = fleet.count_devices(engine, type=selector.get("type"), tags=selector.get("tags"))
            return {"count": count, "error": None if count else "the campaign selects no device"}
        if not devices.get("names"):
            return {"count": 0, "error": "no device given"}
        spec = CampaignSpec(
            name="form",
            description=None,
            names=devices["names"],
            selector=None,
            configurations={},
            expected_state={},
            firmware=None,
        )
        with db.read(engine) as conn:
            return {"count": len(resolve_devices(conn, spec, fail_stored("form"))), "error": None}
    except CampaignctlError as exc:
        return {"count": 0, "error": getattr(exc, "detail", None) or exc.message}


def firmware_options(engine: "Engine", device_type: str) -> list[dict[str, Any]]:
    """The registry's firmwares of a device type, with the keys their firmware type
    fills; whether a token is set, never the token."""
    with db.read(engine) as conn:
        keys = {
            r[0]: {"version_key": r[1], "url_key": r[2], "token_key": r[3]}
            for r in db.run(
                conn,
                "SELECT f.name, f.version_key, f.url_key, f.token_key FROM firmware_type f "
                "JOIN device_type t ON t.id = f.device_type_id WHERE t.name = :name",
                {"name": device_type},
            )
        }
    from campaignctl.firmwares import list_firmwares

    return [
        {
            "value": f"{f['firmware_type']}|{f['version']}",
            "firmware_type": f["firmware_type"],
            "version": f["version"],
            "url": f["url"],
            "token": f["token"] is not None,
            "recalled": f["recalled"] is not None,
            **keys.get(f["firmware_type"], {}),
        }
        for f in list_firmwares(engine, device_type=device_type)
    ]


def launch_page(engine: "Engine", name: str) -> dict[str, Any]:
    shown = campaign_lib.show(engine, name)
    if shown["status"] != "draft":
        raise CampaignctlError(f"campaign {name!r} was already launched ({shown['status']})")
    rollout = Rollout.from_dict(shown["rollout"]) if shown["rollout"] else None
    firmware = shown["firmware"]
    keys: dict[str, Any] = {}
    if firmware:
        for option in firmware_options(engine, (shown["devices"]["selector"] or {}).get("type") or ""):
            if option["value"] == f"{firmware['type']}|{firmware['version']}":
                keys = option
    return {
        "campaign": shown,
        "rollout": rollout.describe() if rollout else "all devices at once",
        "firmware_keys": keys,
    }


def launch(engine: "Engine", name: str) -> str:
    """``campaignctl launch NAME --detach``: the job is created, and the rollout engine
    of ``serve`` (or any ``run``) delivers it."""
    return "scheduled" if job_lib.launch_detached(engine, name) is None else "launched"


def _then(call: Callable[..., Any], done: str) -> Callable[["Engine", str], str]:
    """The library call of a command on a campaign, answering what the page says after."""

    def act(engine: "Engine", name: str) -> str:
        call(engine, name)
        return done

    return act


#: The buttons of the campaign page: the library calls of ``launch --detach``, ``pause``,
#: ``resume``, ``cancel``, ``retry`` and ``delete`` (the serve's engine delivers what they start).
ACTIONS: dict[str, Callable[["Engine", str], str]] = {
    "launch": launch,
    "pause": _then(control.pause, "paused"),
    "resume": _then(control.resume, "resumed"),
    "cancel": _then(api.cancel_now, "cancelled"),
    "retry": _then(lambda engine, name: api.retry_failed(engine, name, None, False), "retried"),
    "delete": _then(campaign_lib.delete, "deleted"),
}


def device(engine: "Engine", name: str) -> dict[str, Any]:
    """``devices show`` (secrets masked), who set each entry, and the device's campaigns."""
    shown = fleet.show_device(engine, name)
    writers: dict[str, str] = {}
    with db.read(engine) as conn:
        for entry in shown["configuration"]:
            entry["set_by"] = writer_name(conn, entry["desired_by"], writers) if entry["desired_by"] else ""
        campaigns = fleet.device_campaigns(conn, name)
    return {"device": shown, "campaigns": campaigns}


def firmwares(engine: "Engine") -> dict[str, Any]:
    from campaignctl.firmwares import list_firmwares

    return {"firmwares": list_firmwares(engine)}


#: Jobs the jobs page lists: the latest.
JOBS_SHOWN = 200


def jobs(engine: "Engine") -> dict[str, Any]:
    """The latest ``JOBS_SHOWN`` jobs, newest first."""
    count = job_lib.count_jobs(engine)
    listed = job_lib.list_jobs(engine, limit=JOBS_SHOWN, offset=max(count - JOBS_SHOWN, 0))
    return {"jobs": listed[::-1], "count": count}
