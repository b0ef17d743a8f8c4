"""``campaignctl status NAME -o csv`` and ``-o ndjson`` of a 100k-device campaign.

    python bench/export.py [--devices 100000] [--keys 3] [--backend sqlite|postgresql]

The devices are on an ``http`` interface (they poll: the launch writes every document,
no broker needed); the campaign sets 3 keys on all of them, key_0 also expected; every
device then fetches its document (marked delivered) and reports its 3 keys, a tenth of
them a different key_0 (``waiting``, with a reason). Each figure is the real command writing to a file, its wall time and peak RSS.
The raw reference, in the same run, is the same rows (names, job items, the reported
values of the keys) read with the bare driver (sqlite3 or psycopg) and written with
``csv.writer``; ``db status`` is the command start-up.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import campaignctl, free_port, import_fleet, new_database, start_postgres


def raw_export(db: str, keys: list[str], out: Path) -> float:
    """The rows an export gives, with the bare driver, written with csv.writer."""
    columns = "".join(f", r{i}.reported" for i in range(len(keys)))
    joins = "".join(
        f" LEFT JOIN device_config r{i} ON r{i}.device_id = ji.device_id AND r{i}.key = '{k}'"
        for i, k in enumerate(keys)
    )
    statement = (
        "SELECT d.name, ji.batch, ji.status, ji.error, ji.attempts, ji.delivered_at, ji.joined_at"
        f"{columns} FROM job_item ji JOIN device d ON d.id = ji.device_id{joins} ORDER BY d.name"
    )
    started = time.perf_counter()
    if db.startswith("postgresql"):
        import psycopg

        conn: Any = psycopg.connect(db.replace("postgresql+psycopg", "postgresql"))
        cursor = conn.cursor(name="export")  # server-side: streamed, as campaignctl reads it
        cursor.execute(statement)
    else:
        import sqlite3

        conn = sqlite3.connect(db)
        cursor = conn.execute(statement)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        while rows := cursor.fetchmany(2000):
            writer.writerows(rows)
    conn.close()
    return time.perf_counter() - started


def timed(*args: str, db: str, out: Path) -> tuple[float, int, int]:
    """The real command, its stdout to ``out``: (wall seconds, its peak RSS in KiB, bytes
    written). Unlike ``common.campaignctl`` the output is not read into this process: a
    child's peak RSS counts what it shares with its parent when forked, and tens of MB of
    a previous command's output kept here would show in the next one's figure."""
    env = dict(os.environ, CAMPAIGNCTL_DB=db)
    with open(out, "wb") as stdout:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "campaignctl", *args], env=env, stdout=stdout)
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"campaignctl {' '.join(args)} failed")
    return elapsed, usage.ru_maxrss, out.stat().st_size


def report_all(url: str, keys: list[str], values: dict[str, str]) -> None:
    """Every device fetched its document and reports the campaign's keys; one in ten a
    different key_0 (``waiting``, with a reason). With the bare driver, so that this
    process stays small: a child's peak RSS counts what it shares with its parent."""
    stamp = "2026-12-01T00:00:00.000000Z"
    pairs = ", ".join(f"('{k}', '{values[k]}')" for k in keys)
    statements = [
        f"UPDATE job_item SET status = 'delivered', delivered_at = '{stamp}'",
        f"WITH k(key, value) AS (VALUES {pairs}) "
        "INSERT INTO device_config (device_id, key, reported, reported_at) "
        "SELECT d.id, k.key, CASE WHEN k.key = 'key_0' AND d.id % 10 = 0 THEN '\"4.0.0\"' ELSE k.value END, "
        f"'{stamp}' FROM device d CROSS JOIN k WHERE true "
        "ON CONFLICT (device_id, key) DO UPDATE SET reported = excluded.reported, reported_at = excluded.reported_at",
    ]
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
            for statement in statements:
                conn.execute(statement)  # no parameters: % is sent as it is
            conn.execute("ANALYZE")
    else:
        import sqlite3

        conn = sqlite3.connect(url, isolation_level=None)
        for statement in statements:
            conn.execute(statement)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a running database would be
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="campaignctl-export-"))
    server = start_postgres() if args.backend == "postgresql" else None
    rows: list[tuple[str, float, int, int]] = []
    try:
        db = new_database(args.backend, work, server)
        names = [f"sensor-{i:07d}" for i in range(args.devices)]
        import_fleet(work, db, "poll", f"{{type: http, url: 'http://127.0.0.1:{free_port()}'}}", "sensor-v2", names)
        keys = [f"key_{k}" for k in range(args.keys)]
        values = {k: json.dumps(f"https://assets.example.com/fw/{k}/5.1.9_beta01.bin") for k in keys}
        (work / "c.yaml").write_text(
            "name: bench\ndevices: {selector: {type: sensor-v2}}\nconfigurations:\n"
            + "".join(f"  {k}: {v}\n" for k, v in values.items())
            + f"expected_state: {{key_0: {values['key_0']}}}\n"
        )
        campaignctl("create", "-f", str(work / "c.yaml"), db=db)
        campaignctl("launch", "bench", db=db)
        report_all(db, keys, values)
        seconds = raw_export(db, keys, work / "raw.csv")
        rows.append(("raw driver + csv.writer (reference)", seconds, 0, (work / "raw.csv").stat().st_size))
        seconds, rss, _size = timed("db", "status", db=db, out=work / "out")
        rows.append(("db status (start-up)", seconds, rss, 0))
        for label, command in [
            ("status -o json", ("status", "bench", "-o", "json")),
            ("status -o csv", ("status", "bench", "-o", "csv")),
            ("status -o ndjson", ("status", "bench", "-o", "ndjson")),
            ("status -o csv --status waiting (10%)", ("status", "bench", "-o", "csv", "--status", "waiting")),
        ]:
            rows.append((label, *timed(*command, db=db, out=work / "out")))
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)
    print(f"export of {args.devices} devices × {args.keys} keys on {args.backend}")
    for label, seconds, rss, size in rows:
        print(
            f"  {label:<36} {seconds:7.2f} s"
            + (f"  {rss / 1024:6.0f} MB" if rss else " " * 10)
            + (f"  {size / 1e6:6.1f} MB out" if size else "")
        )


if __name__ == "__main__":
    main()
