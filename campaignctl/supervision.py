"""The supervision: per device, what a campaign asked for against desired and reported values.

Device statuses, in the order they are decided:

- ``pending``: the campaign's configuration is not yet written for this device (its
  batch has not started, or the campaign is not launched);
- ``skipped``: left out by the firmware version rules (a downgrade, not in ``from``);
- ``superseded``: a campaign of higher priority sets one of the same keys on it;
- ``cancelled``: the campaign was cancelled or aborted before the device got anything;
- ``invalid``: a campaign key's desired value was changed after the campaign set it;
- ``failed``: delivery failed after every retry (reason: the last error), unless the
  device reports the expected state all the same (it got the values another way): valid;
- ``valid``: already running the firmware version the campaign ships (nothing sent); or
  delivered, and every campaign key's desired value and every expected-state
  key's reported value equal the campaign's (compared as JSON);
- ``timed_out``: ``device_timeout`` has passed since delivery (or, for a device that
  polls and never fetched, since its document was written) without becoming valid;
- ``syncing``: written, not yet delivered to the interface (or fetched by the device);
- ``waiting``: delivered, the reported state does not yet equal the expected state.

The database gives, per device, the facts these rules read (the job item's status, whether
a campaign key was changed since, the first expected key the device does not report, whether
its timeout has passed), comparing canonical JSON texts; ``judge`` applies the rules. The
summary is one aggregate over those facts, so that a table of the first devices costs the
aggregate plus the rows shown, and full listings are streamed.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Collection, Iterator

from campaignctl import db, dialect, windows
from campaignctl.jobs import ITEM_STATES, LEFT_OUT
from campaignctl.rollout import Rollout, format_duration
from campaignctl.values import SECRET_MASK, canonical, cut

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

DEVICE_STATES = (
    "pending",
    "syncing",
    "waiting",
    "valid",
    "invalid",
    "failed",
    "timed_out",
    "cancelled",
    "skipped",
    "superseded",
)
#: Devices a campaign leaves out: they count neither for nor against its thresholds.
LEFT_OUT_STATES = ("skipped", "superseded")


def plan_values(name: str, plan: dict[str, Any], part: str) -> tuple[str, dict[str, Any]]:
    """A CTE ``name(type_id, key, value, secret, n)`` of a job plan's values (``part``:
    "configurations" or "expected_state"), ``n`` their number in (type, key) order
    (Python's str order is UTF-8 byte order, the keys' order in SQL), so that "the first
    mismatch" is the same on every backend whatever the plan; and its parameters."""
    rows = sorted((int(t), k, v, k in p["secret"]) for t, p in plan.items() for k, v in p[part].items())
    columns = f"{name}(type_id, key, value, secret, n)"
    if not rows:
        return (
            f"{columns} AS (SELECT CAST(NULL AS INTEGER), CAST(NULL AS TEXT), CAST(NULL AS TEXT), false, "
            "CAST(NULL AS INTEGER) WHERE 1 = 0)"
        ), {}
    params: dict[str, Any] = {}
    values = []
    for n, (type_id, key, value, secret) in enumerate(rows):
        t, k, v, f = (f"{name}_{x}{n}" for x in "tkvs")
        params.update({t: type_id, k: key, v: value, f: bool(secret)})
        if n == 0:  # the first row types the columns
            values.append(
                f"(CAST(:{t} AS INTEGER), CAST(:{k} AS TEXT), CAST(:{v} AS TEXT), CAST(:{f} AS BOOLEAN), "
                f"CAST({n} AS INTEGER))"
            )
        else:
            values.append(f"(:{t}, :{k}, :{v}, :{f}, {n})")
    return f"{columns} AS (VALUES {', '.join(values)})", params


def _tuples(conn: Any, sql: str, params: dict[str, Any]) -> list[tuple]:
    """All rows as plain DB-API tuples: SQLAlchemy's row objects cost more than the
    query at 100k rows."""
    result = db.run(conn, sql, params)
    try:
        return result.cursor.fetchall()
    finally:
        result.close()


#: An expected key's number n is written as N + n: ten digits, so that the smallest
#: text is the first key, whatever the collation.
_N = 1_000_000_000

#: Characters of a reported value quoted in a reason.
_REPORTED_SHOWN = 200

#: Expected keys read by a join each, up to this many (then by a lookup each).
_JOINED_KEYS = 8


def judge(item: str, invalid: bool, mismatch: bool, timed_out: bool, expecting: bool) -> str:
    """A device's status from its facts, in the order of the module's list. ``mismatch``:
    an expected key's reported value differs; ``expecting``: its device type has an
    expected state."""
    if item in ("pending", "cancelled", "skipped", "superseded"):
        return item
    if item == "installed":
        return "valid"
    if invalid:
        return "invalid"
    if item == "failed" and (mismatch or not expecting):
        return "failed"  # a failed device that reports the expected state got it another way
    if item in ("delivered", "failed") and not mismatch:
        return "valid"
    if timed_out:
        return "timed_out"
    if item == "syncing":
        return "syncing"
    return "waiting"


def _items_for(statuses: Collection[str]) -> list[str]:
    """The job item statuses that can be judged one of ``statuses``: a filter the
    database applies before the rules."""
    return [
        item
        for item in ITEM_STATES
        if any(
            judge(item, *facts) in statuses
            for facts in (
                (i, m, t, e) for i in (False, True) for m in (False, True) for t in (False, True) for e in (False, True)
            )
        )
    ]


class _Facts:
    """The SQL of a job's facts. Each expected key's entry is joined by primary key, and
    "changed since" only looks at the entries others wrote since the job's first write
    (an index on the revision finds them), so that the cost per device stays a few index
    lookups on both backends."""

    def __init__(
        self, conn: "Connection", job_id: int, plan: dict[str, Any], rollout: Rollout, now: float | None
    ) -> None:
        state_rows = sorted(
            (int(t), k, v, k in p["secret"]) for t, p in plan.items() for k, v in p["expected_state"].items()
        )
        cfg_cte, cfg_params = plan_values("cfg", plan, "configurations")
        self.cte = f"WITH {cfg_cte}"
        self.expected = [(key, secret) for _t, key, _v, secret in state_rows]  # by n
        self.params: dict[str, Any] = {**cfg_params, "job_id": job_id}
        types = sorted({int(t) for t in plan})
        # A job of one device type needs no look at the device for its type.
        self.joins_device = len(types) != 1
        device_type = "d.device_type_id" if self.joins_device else str(types[0])
        # Each expected key's entry is joined once (a value read twice costs nothing);
        # past a few keys, one lookup where it is used keeps the join count small.
        keys = sorted({key for _t, key, _v, _s in state_rows})
        joined = len(keys) <= _JOINED_KEYS
        self.joins = (
            "".join(
                f" LEFT JOIN device_config e{i} ON e{i}.device_id = ji.device_id AND e{i}.key = :ek{i}"
                for i in range(len(keys))
            )
            if joined
            else ""
        )
        self.params.update({f"ek{i}": key for i, key in enumerate(keys)})
        # The reported value of each expected key, and its entry's secret flag, where the
        # joins give them.
        self.reported = {key: f"e{i}.reported" for i, key in enumerate(keys)} if joined else {}
        self.secret = {key: f"e{i}.secret" for i, key in enumerate(keys)} if joined else {}
        self.params["secret_mask"] = SECRET_MASK
        by_type: dict[int, list[tuple[int, str, str]]] = {}
        for n, (type_id, key, value, _secret) in enumerate(state_rows):
            self.params[f"ev{n}"] = value
            i = keys.index(key)
            entry = "(SELECT c.{} FROM device_config c WHERE c.device_id = ji.device_id AND c.key = :ek%d)" % i
            reported, secret = (
                (f"e{i}.reported", f"e{i}.secret") if joined else (entry.format("reported"), entry.format("secret"))
            )
            by_type.setdefault(type_id, []).append((n, reported, secret))

        def per_type(expression: Any, default: str) -> str:
            arms = {t: expression(keys) for t, keys in by_type.items()}
            if not arms:
                return default
            if not self.joins_device:
                return arms.get(types[0], default)
            return (
                "CASE d.device_type_id "
                + " ".join(f"WHEN {t} THEN {a}" for t, a in arms.items())
                + f" ELSE {default} END"
            )

        # The first expected key whose reported value differs, with what is reported
        # ('' for nothing), as one text whose order is the keys' order; NULL for none.
        # What is reported is read through ``masked``: once secret, always secret.
        first_mismatch = per_type(
            lambda keys: (
                "CASE "
                + " ".join(
                    f"WHEN {r} IS DISTINCT FROM :ev{n} THEN '{_N + n}' || coalesce({masked(r, s, ':secret_mask')}, '')"
                    for n, r, s in keys
                )
                + " END"
            ),
            "NULL",
        )
        any_mismatch = per_type(
            lambda keys: (
                "CASE WHEN " + " OR ".join(f"{r} IS DISTINCT FROM :ev{n}" for n, r, _s in keys) + " THEN 1 ELSE 0 END"
            ),
            "0",
        )
        # Judged without the other facts:
        settled = "ji.status IN (" + ", ".join(f"'{s}'" for s in ("pending", "cancelled", *LEFT_OUT)) + ")"
        self.mismatch = f"CASE WHEN {settled} THEN NULL ELSE {first_mismatch} END"
        self.any_mismatch = f"CASE WHEN {settled} THEN 0 ELSE {any_mismatch} END"
        expecting = sorted(by_type)
        self.expecting = (
            "1"
            if len(expecting) == len(types)
            else "0"
            if not expecting
            else f"CASE WHEN {device_type} IN ({', '.join(map(str, expecting))}) THEN 1 ELSE 0 END"
        )
        if rollout.device_timeout is None:
            self.timed_out = "0"
        else:
            cutoff = (time.time() if now is None else now) - rollout.device_timeout
            self.params["cutoff"] = (
                datetime.fromtimestamp(cutoff, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
            )
            # Stamps are ISO 8601 UTC texts of one format: they compare as times.
            self.timed_out = "CASE WHEN coalesce(ji.delivered_at, ji.updated_at) <= :cutoff THEN 1 ELSE 0 END"
        # A campaign key whose desired value is no longer the campaign's. Only an entry
        # written after the job's own writes can be one: the candidates come from the
        # revision index, and are few unless someone changed many devices since.
        value = "cfg.value"
        restore_job = next((p.get("restore_job") for p in plan.values() if p.get("restore_job")), None)
        if restore_job is not None:
            # A rollback's keys (value NULL) hold each device's value from before.
            self.params["restore_job"] = restore_job
            value = (
                "coalesce(cfg.value, (SELECT b.desired FROM job_item_before b WHERE b.job_id = :restore_job "
                "AND b.device_id = ji.device_id AND b.key = cfg.key))"
            )
        self.changed_from = (
            f"FROM cfg JOIN device_config c ON c.device_id = ji.device_id AND c.key = cfg.key "
            f"WHERE cfg.type_id = {device_type} AND c.desired IS DISTINCT FROM {value}"
        )
        self.candidates = (
            f"ji.device_id IN (SELECT later.device_id FROM device_config later "
            f"WHERE {self._written_by_others(conn, job_id)})"
        )
        # CASE, not AND: SQL does not promise to skip the right side of an AND.
        self.invalid = (
            f"CASE WHEN {settled} THEN 0 WHEN NOT ({self.candidates}) THEN 0 "
            f"WHEN EXISTS (SELECT 1 {self.changed_from}) THEN 1 ELSE 0 END"
        )

    def _written_by_others(self, conn: "Connection", job_id: int) -> str:
        """The revisions that others (users, other jobs) gave entries since the job's
        first write: the ranges between and after the job's own revisions (the global
        counter gives each write its own), which the index reads without a look at the
        job's own entries."""
        # Kept with the job by each write (and back-filled by revision 0004): reading
        # them from the job's items would scan a million rows at a million devices.
        stored = db.run(conn, "SELECT revisions FROM job WHERE id = :job_id", {"job_id": job_id}).scalar()
        revisions = sorted(int(r) for r in (stored or "").split(",") if r)
        if not revisions:
            return "1 = 0"  # nothing written yet: nothing changed since
        gaps = [(a + 1, b - 1) for a, b in zip(revisions, revisions[1:]) if b > a + 1]
        self.params["rev_last"] = revisions[-1]
        if len(gaps) > 50:  # a write step shared with much other work: one range, filtered
            self.params.update(rev_first=revisions[0], job_by=f"job:{job_id}")
            return "later.desired_revision > :rev_first AND later.desired_by IS DISTINCT FROM :job_by"
        ranges = ["later.desired_revision > :rev_last"]
        for i, (low, high) in enumerate(gaps):
            self.params.update({f"gap{i}_lo": low, f"gap{i}_hi": high})
            ranges.append(f"later.desired_revision BETWEEN :gap{i}_lo AND :gap{i}_hi")
        return " OR ".join(ranges)

    def where(self, batch: int | None, items: list[str] | None) -> str:
        sql = "WHERE ji.job_id = :job_id"
        if batch is not None:
            self.params["batch"] = batch
            sql += " AND ji.batch = :batch"
        if items is not None:
            self.params.update({f"item{i}": item for i, item in enumerate(items)})
            sql += f" AND ji.status IN ({', '.join(f':item{i}' for i in range(len(items))) or 'NULL'})"
        return sql


def status_counts(
    conn: "Connection",
    job_id: int,
    plan: dict[str, Any],
    rollout: Rollout,
    *,
    batch: int | None = None,
    now: float | None = None,
    facts: "_Facts | None" = None,
) -> dict[int, dict[str, int]]:
    """Per batch, the number of devices in each status: one aggregate over the facts."""
    facts = facts or _Facts(conn, job_id, plan, rollout, now)
    device = "JOIN device d ON d.id = ji.device_id" if facts.joins_device else ""
    # The facts as the bits of one number: fewer and smaller keys to group on (the
    # grouping is most of the cost at a million devices).
    code = f"({facts.invalid}) * 8 + ({facts.any_mismatch}) * 4 + ({facts.timed_out}) * 2 + ({facts.expecting})"
    rows = _tuples(
        conn,
        f"""
        {facts.cte}
        SELECT ji.batch, ji.status, {code}, count(*)
        FROM job_item ji {device}{facts.joins} {facts.where(batch, None)}
        GROUP BY ji.batch, ji.status, 3
    """,
        facts.params,
    )
    per: dict[int, dict[str, int]] = {}
    for number, item, bits, count in rows:
        states = per.setdefault(number, dict.fromkeys(DEVICE_STATES, 0))
        states[judge(item, bool(bits & 8), bool(bits & 4), bool(bits & 2), bool(bits & 1))] += count
    return per


def totals(per_batch: dict[int, dict[str, int]]) -> dict[str, int]:
    """The counts of ``status_counts`` over all batches."""
    out = dict.fromkeys(DEVICE_STATES, 0)
    for states in per_batch.values():
        for state, count in states.items():
            out[state] += count
    return out


def device_statuses(
    conn: "Connection",
    job_id: int,
    plan: dict[str, Any],
    rollout: Rollout,
    *,
    batch: int | None = None,
    now: float | None = None,
    only: Collection[str] | None = None,
    limit: int | None = None,
    facts: "_Facts | None" = None,
    reported: tuple[str, ...] = (),
    offset: int = 0,
    name_contains: str | None = None,
) -> Iterator[dict[str, Any]]:
    """The devices of a job (or of one of its batches) in name order, with their status
    and its reason; ``only``: those with one of these statuses; ``name_contains``: those
    whose name holds this text (any case); ``limit``: the first ones after the ``offset``
    first (a page);
    ``reported`` (an export): also ``delivered_at`` and the reported values (canonical JSON
    texts, None when not reported) of these keys, as ``reported``.
    Streamed from the database (a million devices are never all in memory)."""
    if limit is not None and limit <= 0:
        return
    facts = facts or _Facts(conn, job_id, plan, rollout, now)
    items = None if only is None else _items_for(only)
    where = facts.where(batch, items)
    sep = dialect.separator(conn)
    # Which campaign key changed, by whom and when, for the few devices changed since.
    changed = dict(
        _tuples(
            conn,
            f"""
        {facts.cte}
        SELECT ji.device_id,
          (SELECT cfg.key || {sep} || coalesce(c.desired_by, '') || {sep} || coalesce(c.desired_at, '')
           {facts.changed_from} ORDER BY cfg.n LIMIT 1)
        FROM job_item ji JOIN device d ON d.id = ji.device_id
        {where} AND {facts.candidates}
    """,
            facts.params,
        )
    )
    started = {
        n
        for (n,) in db.run(
            conn, "SELECT number FROM job_batch WHERE job_id = :job_id AND status <> 'pending'", {"job_id": job_id}
        )
    }
    timeout = rollout.device_timeout
    waiting = windows.Waiting.of(rollout)  # devices of started batches waiting for their window
    reasons: dict[str, str] = {}  # a fleet's devices mostly report the same few things
    writers: dict[str, str] = {}

    def writer(by: str) -> str:
        return writer_name(conn, by, writers)

    def mismatch_reason(mismatch: str) -> str:
        reason = reasons.get(mismatch)
        if reason is None:
            reason = reasons[mismatch] = _mismatch(facts.expected, mismatch)
        return reason

    # Without a filter the database stops after the rows shown; with one, the rows are
    # judged as they stream. A job of most of the fleet is read in the order of the
    # devices' names (CROSS JOIN: SQLite keeps that join order), so that nothing is
    # sorted and the first rows come at once; a job of a few devices is read, then sorted.
    cut = f"LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None and only is None else ""
    skip = 0 if cut else offset  # else skipped as they are judged
    total, fleet = db.run(
        conn, "SELECT (SELECT total FROM job WHERE id = :job_id), (SELECT count(*) FROM device)", {"job_id": job_id}
    ).one()
    source = (
        "device d CROSS JOIN job_item ji"
        if 2 * (total or 0) >= fleet
        else "job_item ji JOIN device d ON d.id = ji.device_id"
    )
    exported, exported_joins = _exported(facts, reported)
    zone, zone_params = ("", {}) if waiting is None else waiting.column(conn, "d")  # the last column
    named, named_params = _name_filter(name_contains)
    result = conn.execute(
        db.sql(f"""
        {facts.cte}
        SELECT d.name, ji.status, ji.error, ji.attempts, ji.updated_at, ji.batch, ji.device_id,
               {facts.mismatch}, {facts.timed_out}, {facts.expecting}, ji.joined_at{exported}{zone}
        FROM {source}{facts.joins}{exported_joins}
        {where} AND ji.device_id = d.id{named}
        ORDER BY d.name {cut}
    """).execution_options(stream_results=True),
        {**facts.params, **zone_params, **named_params},
    )
    shown = 0
    try:
        # Through the result, not its DB-API cursor: a server-side cursor's first rows
        # are already in the result's buffer.
        for rows in result.partitions(2000):
            for row in rows:
                name, item, error, attempts, updated_at, number, device_id = row[:7]
                mismatch, timed_out, expecting, joined = row[7:11]  # an export's columns follow
                status = judge(
                    item, changed.get(device_id) is not None, mismatch is not None, bool(timed_out), bool(expecting)
                )
                if only is not None and status not in only:
                    continue
                if skip:
                    skip -= 1
                    continue
                reason = None
                if status == "pending":
                    if number not in started:
                        reason = f"batch {number} has not started"
                    elif waiting is not None:
                        reason = waiting.reason(row[-1])
                elif status in ("cancelled", "failed", "skipped", "superseded") or item == "installed":
                    reason = error
                elif status == "invalid":
                    key, by, at = changed[device_id].split("\x1f")
                    reason = f"{key} was changed after the campaign set it" + (
                        f" (by {writer(by)} at {at})" if by else ""
                    )
                elif status == "timed_out":
                    what = "delivered" if item == "delivered" else "written, never fetched,"
                    reason = f"{what} {format_duration(timeout or 0)} ago and still not valid"
                    if mismatch is not None:
                        reason += f" ({mismatch_reason(mismatch)})"
                elif status == "waiting":
                    reason = mismatch_reason(mismatch)
                device = {
                    "device": name,
                    "status": status,
                    "reason": reason,
                    "batch": number,
                    "attempts": attempts,
                    "updated_at": updated_at,
                    "joined_at": joined,  # a dynamic campaign's device that came to match after launch
                }
                if reported:
                    device["delivered_at"], device["reported"] = row[11], dict(zip(reported, row[12:]))
                yield device
                shown += 1
                if limit is not None and shown >= limit:
                    return
    finally:
        result.close()


def campaign_keys(plan: dict[str, Any]) -> list[tuple[str, bool]]:
    """A job plan's keys, configured or expected, sorted, each with whether it is secret
    for any device type: the reported values an export gives."""
    secret: dict[str, bool] = {}
    for part in plan.values():
        for key in (*part["configurations"], *part["expected_state"]):
            secret[key] = secret.get(key, False) or key in part["secret"]
    return sorted(secret.items())


def spec_plan(spec: Any) -> dict[str, Any]:
    """The part of a plan a manifest gives by itself, for ``campaign_keys``."""
    return {
        "configurations": spec.configurations,
        "expected_state": spec.expected_state,
        "secret": [k.split(".", 1)[1] for k in spec.secret_keys],
    }


def masked(reported: str, secret: str, mask: str) -> str:
    """SQL for a reported value as it may be shown: ``mask`` (SQL) when its entry is
    marked secret. The entry's flag stays set once a secret value was written to it
    (``store.UPSERT_DESIRED``), whatever the current campaign says: the device may still
    report that value. Nothing reported stays NULL."""
    return f"CASE WHEN {reported} IS NOT NULL AND {secret} THEN {mask} ELSE {reported} END"


def _exported(facts: _Facts, keys: tuple[str, ...]) -> tuple[str, str]:
    """The columns an export adds (the delivery's time, each key's reported value,
    masked when its entry is secret) and the joins they read: an expected key's entry is
    joined already; each other key's is joined by primary key (a join, not a subquery
    per row: PostgreSQL can then read them in one pass)."""
    if not keys:
        return "", ""
    columns, joins = [", ji.delivered_at"], []
    facts.params["secret_json"] = canonical(SECRET_MASK)  # reported values are JSON texts
    for i, key in enumerate(keys):
        if key not in facts.reported:
            facts.params[f"rk{i}"] = key
            joins.append(f" LEFT JOIN device_config r{i} ON r{i}.device_id = ji.device_id AND r{i}.key = :rk{i}")
        reported, secret = facts.reported.get(key, f"r{i}.reported"), facts.secret.get(key, f"r{i}.secret")
        columns.append(", " + masked(reported, secret, ":secret_json"))
    return "".join(columns), "".join(joins)


def _name_filter(text: str | None) -> tuple[str, dict[str, Any]]:
    """The condition (and its parameter) for device names that hold ``text``, any case:
    LIKE, with its wildcards in the text escaped."""
    if not text:
        return "", {}
    escaped = text.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return " AND lower(d.name) LIKE :name_pattern ESCAPE '!'", {"name_pattern": f"%{escaped}%"}


def writer_name(conn: "Connection", by: str, cache: dict[str, str]) -> str:
    """Who wrote an entry, for a reason: "job:7" as the campaign of that job (the name
    a user can look up); "user" as it is."""
    if not by.startswith("job:") or not by[4:].isdigit():
        return by
    if by not in cache:
        name = db.run(
            conn,
            "SELECT c.name FROM job j JOIN campaign c ON c.id = j.campaign_id WHERE j.id = :id",
            {"id": int(by[4:])},
        ).scalar()
        cache[by] = f"campaign {name}" if name is not None else by
    return cache[by]


def _mismatch(expected: list[tuple[str, bool]], mismatch: str) -> str:
    # A secret entry's value comes as the mask already (``masked``): JSON text never is.
    key, secret = expected[int(mismatch[:10]) - _N]
    reported = mismatch[10:]
    if not reported:
        return f"{key} not reported yet"
    # A device may report up to 64 KiB: the reason quotes the start of it.
    return f"{key} reported {SECRET_MASK if secret else cut(reported, _REPORTED_SHOWN)}"


def campaign_status(
    engine: "Engine", name: str, *, only: Collection[str] | None = None, limit: int | None = None, offset: int = 0
) -> dict[str, Any]:
    """The supervision of a campaign, as documented for ``status -o json``; ``only``,
    ``limit`` and ``offset`` choose the devices listed (the summary counts them all)."""
    with open_status(engine, name, only=only, limit=limit, offset=offset) as data:
        data["devices"] = list(data["devices"])
    return data


@contextmanager
def open_status(
    engine: "Engine",
    name: str,
    *,
    only: Collection[str] | None = None,
    limit: int | None = None,
    export: bool = False,
    offset: int = 0,
    name_contains: str | None = None,
) -> Iterator[dict[str, Any]]:
    """``campaign_status`` whose ``devices`` is an iterator, read while the ``with``
    block lasts (from one snapshot of the database). ``export``: with ``keys``, the
    campaign's keys as (key, secret) pairs, and per device its delivery's time and the
    values it reports for them (``campaignctl.export``); its summary counts nothing."""
    from campaignctl import approvals, jobs
    from campaignctl.campaigns import fail_stored, get_spec
    from campaignctl.errors import InputError

    with db.read(engine) as conn:
        row, spec = get_spec(conn, name)
        extra = db.run(conn, "SELECT reason, start_at FROM campaign WHERE id = :id", {"id": row.id}).one()
        job_id = jobs.latest_job(conn, row.id)
        rollbacks = [
            {"campaign": r[0], "status": r[1]}
            for r in db.run(
                conn, "SELECT name, status FROM campaign WHERE rollback_of = :name ORDER BY id", {"name": name}
            )
        ]
        batches: list[dict[str, Any]] = []
        devices: Iterator[dict[str, Any]]
        # Before a launch, the manifest's keys (the firmware's come with the job's plan).
        keys = campaign_keys({"": spec_plan(spec)}) if export else []
        if job_id is None:
            from campaignctl.campaigns import resolve_devices

            try:
                ids = [d for d, _ in resolve_devices(conn, spec, fail_stored(name))]
            except InputError:
                ids = []
            why = "the campaign is not launched" if row.status == "draft" else f"the campaign is {row.status}"
            summary = {"total": len(ids), **dict.fromkeys(DEVICE_STATES, 0), "pending": len(ids), "joined": 0}
            listed = (
                []
                if limit == 0 or (only is not None and "pending" not in only)
                else _names(conn, ids, None if limit is None else offset + limit, name_contains)[offset:]
            )
            devices = iter(
                [
                    {
                        "device": n,
                        "status": "pending",
                        "reason": why,
                        "batch": None,
                        "attempts": 0,
                        "updated_at": None,
                        "joined_at": None,
                    }
                    for n in listed
                ]
            )
            job = None
        else:
            job = jobs.summary(conn, job_id)
            stored = db.run(conn, "SELECT plan, settings FROM job WHERE id = :id", {"id": job_id}).one()
            plan = db.loads(stored[0], dict)
            rollout = Rollout.from_dict(db.loads(stored[1], dict).get("rollout"))
            facts = _Facts(conn, job_id, plan, rollout, time.time())  # one instant for the counts and the rows
            # An export lists the devices, not the counts: their aggregate (one more pass
            # over every device) is not made, and its summary and batches count nothing.
            per_batch = {} if export else status_counts(conn, job_id, plan, rollout, facts=facts)
            counts = totals(per_batch)
            summary = {"total": sum(counts.values()), **counts, "joined": _joined(conn, job_id)}
            batches = _batches(conn, job_id, per_batch)
            keys = campaign_keys(plan) if export else []
            if limit is None:
                dialect.reading_all_rows(conn)  # every device is listed: not a first page
            devices = device_statuses(
                conn,
                job_id,
                plan,
                rollout,
                only=only,
                limit=limit,
                offset=offset,
                name_contains=name_contains,
                facts=facts,
                reported=tuple(k for k, _ in keys),
            )
        approval = approvals.state(conn, row.id, spec)
        # A campaign that has not started says what its start waits for.
        waiting = approvals.blocker(approval) if row.status in approvals.UNSTARTED else None
        try:
            yield {
                "campaign": row.name,
                "status": row.status,
                "reason": extra[0]
                if row.status in ("paused", "aborted", "cancelled")
                else waiting and f"cannot start until approved: {waiting}",
                "approval": approval,
                "start_at": extra[1],
                "window": windows.summary_of(Rollout.from_dict(spec.rollout)),  # None without windows
                "priority": spec.priority,
                "rollback_of": spec.rollback_of,
                "rollbacks": rollbacks,
                "job": job,
                "summary": summary,
                "batches": batches,
                "devices": devices,
                **({"keys": keys} if export else {}),
            }
        finally:
            close = getattr(devices, "close", None)
            if close is not None:
                close()  # a listing left unfinished lets go of its cursor before the snapshot ends


def _joined(conn: Any, job_id: int) -> int:
    """The devices that joined the job after its launch (a dynamic campaign)."""
    return int(
        db.run(
            conn, "SELECT count(*) FROM job_item WHERE job_id = :job_id AND joined_at IS NOT NULL", {"job_id": job_id}
        ).scalar_one()
    )


def _batches(conn: Any, job_id: int, per: dict[int, dict[str, int]]) -> list[dict[str, Any]]:
    return [
        {
            "number": r[0],
            "size": r[1],
            "status": r[2],
            "started_at": r[3],
            "delivered_at": r[4],
            "finished_at": r[5],
            "reason": r[6],
            "summary": per.get(r[0], dict.fromkeys(DEVICE_STATES, 0)),
        }
        for r in db.run(
            conn,
            "SELECT number, size, status, started_at, delivered_at, finished_at, reason FROM job_batch "
            "WHERE job_id = :job_id ORDER BY number",
            {"job_id": job_id},
        )
    ]


def _names(conn: Any, ids: list[int], limit: int | None, contains: str | None = None) -> list[str]:
    """The first ``limit`` (or all) names of these devices, in name order; ``contains``:
    only those that hold this text (any case)."""
    import heapq

    names: list[str] = []
    for start in range(0, len(ids), 5000):
        names += [
            r[0]
            for r in db.run(conn, "SELECT name FROM device WHERE id IN :ids", {"ids": ids[start : start + 5000]}, "ids")
        ]
    if contains:
        names = [n for n in names if contains.lower() in n.lower()]
    # str order: UTF-8 byte order, as d.name sorts in SQL
    return sorted(names) if limit is None else heapq.nsmallest(limit, names)
