"""The convergence chart of a campaign: its devices per status over time since launch,
from the times the database already keeps (no history table).

One grouped query over the job's items reads, per device, when it was delivered
(``job_item.delivered_at``), when its item last changed (``job_item.updated_at``) and when
it last reported one of the campaign's expected keys (``device_config.reported_at``), and
counts these events per time slot (a second, a minute or an hour, by the campaign's age).
A device is then drawn as:

- *valid* from the later of its delivery and its last report of an expected key, if it
  is valid now (an already installed firmware: from its item's last change);
- *failed* from its item's last change, if its delivery failed and it is not valid;
- *waiting* from its delivery until it is valid (or for good, if it is not);
- *not delivered* before that.

It approximates the history: a device that reported again after it became valid is drawn
valid from its last report; one changed by a user since (``invalid``) or timed out is
drawn as it was before. The counts of the last point are exact for valid and failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from campaignctl import db
from campaignctl.supervision import plan_values

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

#: Series drawn, bottom to top, with their colours (the CSS classes of the status bar).
SERIES = ("valid", "waiting", "failed", "undelivered")


def _slot_width(launched: datetime, now: datetime) -> int:
    """Characters of an ISO 8601 stamp kept as its time slot: seconds for a campaign
    younger than 20 minutes, minutes up to two days, hours after (a few thousand points
    at most)."""
    age = (now - launched).total_seconds()
    return 19 if age <= 1200 else 16 if age <= 2 * 86400 else 13


def _parse(stamp: str) -> datetime:
    text = stamp.rstrip("Z")
    text += {13: ":00:00", 16: ":00"}.get(len(text), "")
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def _events(conn: "Connection", job_id: int, width: int) -> list[tuple[str, str, int]]:
    plan = db.loads(db.run(conn, "SELECT plan FROM job WHERE id = :id", {"id": job_id}).scalar_one(), dict)
    cte, params = plan_values("exp", plan, "expected_state")
    # Each kind of event counted per slot: delivered; valid (delivered, or not); failed.
    # Stamps are ISO 8601 UTC texts of one format: they compare, and cut, as times.
    sql = f"""
        WITH {cte},
        dev AS (
          SELECT ji.status AS status, ji.delivered_at AS delivered_at, ji.updated_at AS updated_at,
            (SELECT max(c.reported_at) FROM exp JOIN device_config c ON c.device_id = ji.device_id AND c.key = exp.key
             WHERE exp.type_id = d.device_type_id) AS reported_at,
            CASE WHEN EXISTS (SELECT 1 FROM exp LEFT JOIN device_config c
                              ON c.device_id = ji.device_id AND c.key = exp.key
                              WHERE exp.type_id = d.device_type_id AND c.reported IS DISTINCT FROM exp.value)
                 THEN 1 ELSE 0 END AS mismatch,
            CASE WHEN EXISTS (SELECT 1 FROM exp WHERE exp.type_id = d.device_type_id) THEN 1 ELSE 0 END AS expecting
          FROM job_item ji JOIN device d ON d.id = ji.device_id WHERE ji.job_id = :job_id
        ),
        events AS (
          SELECT 'delivered' AS kind, delivered_at AS at FROM dev WHERE delivered_at IS NOT NULL
          UNION ALL
          SELECT CASE WHEN delivered_at IS NULL THEN 'valid_other' ELSE 'valid' END,
                 CASE WHEN reported_at > coalesce(delivered_at, updated_at) THEN reported_at
                      ELSE coalesce(delivered_at, updated_at) END
          FROM dev WHERE status = 'installed' OR (status = 'delivered' AND mismatch = 0)
                      OR (status = 'failed' AND mismatch = 0 AND expecting = 1)
          UNION ALL
          SELECT 'failed', updated_at FROM dev WHERE status = 'failed' AND (mismatch = 1 OR expecting = 0)
        )
        SELECT kind, substr(at, 1, {int(width)}), count(*) FROM events GROUP BY 1, 2 ORDER BY 2
    """
    return [(r[0], r[1], int(r[2])) for r in db.run(conn, sql, {**params, "job_id": job_id})]


@dataclass
class Chart:
    """The points of the chart: times and, per series, the device count at each."""

    total: int
    times: list[datetime]
    counts: dict[str, list[int]]

    def svg(self, width: int = 720, height: int = 220) -> dict[str, Any]:
        """The geometry of a stacked-area SVG (paths per series, axis labels), for the
        template: numbers only, no text from the database."""
        left, right, top, bottom = 44, 8, 8, 22
        plot_w, plot_h = width - left - right, height - top - bottom
        start, end = self.times[0], self.times[-1]
        span = max((end - start).total_seconds(), 1.0)
        total = max(self.total, 1)

        def x(t: datetime) -> float:
            return round(left + plot_w * (t - start).total_seconds() / span, 1)

        def y(count: float) -> float:
            return round(top + plot_h * (1 - count / total), 1)

        areas = []
        below = [0] * len(self.times)
        for name in SERIES:
            above = [b + c for b, c in zip(below, self.counts[name])]
            upper = _steps([(x(t), y(v)) for t, v in zip(self.times, above)])
            lower = _steps([(x(t), y(v)) for t, v in zip(self.times, below)])[::-1]
            points = upper + lower
            areas.append({"series": name, "d": "M" + " L".join(f"{px},{py}" for px, py in points) + " Z"})
            below = above
        ticks = [{"y": y(total * f), "label": str(round(total * f))} for f in (0, 0.5, 1)]
        labels = [
            {"x": x(t), "label": t.strftime("%H:%M:%S" if span < 86400 else "%d %H:%M")}
            for t in (start, start + (end - start) / 2, end)
        ]
        return {
            "width": width,
            "height": height,
            "areas": areas,
            "ticks": ticks,
            "labels": labels,
            "left": left,
            "bottom": height - bottom,
            "right": width - right,
            "top": top,
        }


def _steps(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A step line through the points: counts change at each time, not between."""
    out: list[tuple[float, float]] = []
    for i, point in enumerate(points):
        if i:
            out.append((point[0], points[i - 1][1]))
        out.append(point)
    return out


def convergence(conn: "Connection", job_id: int, launched_at: str, total: int, now: datetime | None = None) -> Chart:
    now = now or datetime.now(timezone.utc)
    launched = _parse(launched_at[:19])
    width = _slot_width(launched, now)
    per_slot: dict[str, dict[str, int]] = {}
    for kind, slot, count in _events(conn, job_id, width):
        per_slot.setdefault(slot, {}).setdefault(kind, 0)
        per_slot[slot][kind] += count
    times, counts = [launched], {name: [0] for name in SERIES}
    counts["undelivered"][0] = total
    delivered = valid = valid_delivered = failed = 0
    for slot in sorted(per_slot):
        got = per_slot[slot]
        delivered += got.get("delivered", 0)
        valid_delivered += got.get("valid", 0)
        valid += got.get("valid", 0) + got.get("valid_other", 0)
        failed += got.get("failed", 0)
        times.append(max(_parse(slot), launched))
        waiting = max(delivered - valid_delivered, 0)
        for name, value in (
            ("valid", valid),
            ("waiting", waiting),
            ("failed", failed),
            ("undelivered", max(total - valid - waiting - failed, 0)),
        ):
            counts[name].append(value)
    if now > times[-1]:  # the last counts hold until now
        times.append(now)
        for name in SERIES:
            counts[name].append(counts[name][-1])
    return Chart(total, times, counts)
