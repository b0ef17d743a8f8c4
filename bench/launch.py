"""Benchmark of a campaign launch over MQTT, against the raw limits measured in the same run.

    python bench/launch.py [--devices 100000] [--keys 3] [--backend sqlite|postgresql] [--db URL]
                           [--processes N]

Creates N devices on one MQTT interface (a private mosquitto on 127.0.0.1), launches a
campaign with the real command (its default delivery processes, or `--processes N`) and
reports: the database (write) step, the delivery step, the launch's wall time and peak
memory, `status` (table, and `-o json`) beside the start-up of a command that reads
little (`list`), `campaignctl --help`; and, as references, the same
rows written raw (SQLite: plain sqlite3 executemany; PostgreSQL: psycopg COPY into
campaignctl's own tables, constraints and indexes included) and plain
paho-mqtt QoS 1 publishes of the same payloads (one client, its own window of 1000,
paho's in-flight limit off).

``--backend postgresql`` starts a private PostgreSQL server on 127.0.0.1; ``--db
postgresql://USER@HOST/DB`` uses that server instead (a new database is created on it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import campaignctl, iso_seconds, mqtt_fleet, new_database, start_mosquitto, start_postgres


def raw_sqlite(path: Path, devices: int, values: dict[str, str]) -> float:
    """The same rows as the write step (job items, desired entries), written by plain
    sqlite3 executemany in one transaction with the same pragmas."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE job_item (job_id INTEGER, device_id INTEGER, status TEXT, revision INTEGER, "
        "updated_at TEXT, PRIMARY KEY (job_id, device_id)) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE device_config (device_id INTEGER, key TEXT, desired TEXT, desired_at TEXT, "
        "desired_revision INTEGER, desired_by TEXT, secret INTEGER, PRIMARY KEY (device_id, key)) WITHOUT ROWID"
    )
    now = "2026-11-25T00:00:00.000000Z"
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO job_item VALUES (1, ?, 'syncing', 1, ?)", ((i, now) for i in range(devices)))
    conn.executemany(
        "INSERT INTO device_config VALUES (?, ?, ?, ?, 1, 'job:1', 0)",
        ((i, k, v, now) for i in range(devices) for k, v in values.items()),
    )
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def raw_postgres(url: str, devices: int, values: dict[str, str]) -> float:
    """The same rows, written by psycopg COPY (the fastest way into PostgreSQL) in one
    transaction, into campaignctl's own tables (``url``: a fresh, migrated database), so
    that the same constraints and indexes are paid for; the devices they refer to are
    created first, untimed."""
    import psycopg

    now = "2026-11-25T00:00:00.000000Z"
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO interface (id, name, type, created_at, updated_at) VALUES (1, 'i', 'mqtt', 'x', 'x')")
        conn.execute("INSERT INTO device_type (id, name, created_at) VALUES (1, 't', 'x')")
        with conn.cursor().copy(
            "COPY device (id, name, device_type_id, interface_id, created_at, updated_at) FROM STDIN"
        ) as copy:
            for i in range(1, devices + 1):
                copy.write_row((i, f"d{i}", 1, 1, now, now))
        conn.execute("INSERT INTO campaign (id, name, spec, created_at, updated_at) VALUES (1, 'c', '{}', 'x', 'x')")
        conn.execute("INSERT INTO job (id, campaign_id, created_at) VALUES (1, 1, 'x')")
        conn.commit()
        conn.execute("ANALYZE")
        started = time.perf_counter()
        with conn.cursor() as cur:
            with cur.copy("COPY job_item (job_id, device_id, status, revision, updated_at) FROM STDIN") as copy:
                for i in range(1, devices + 1):
                    copy.write_row((1, i, "syncing", 1, now))
            with cur.copy(
                "COPY device_config (device_id, key, desired, desired_at, desired_revision, desired_by, "
                "secret) FROM STDIN"
            ) as copy:
                for i in range(1, devices + 1):
                    for k, v in values.items():
                        copy.write_row((i, k, v, now, 1, "job:1", False))
        conn.commit()
        return time.perf_counter() - started


def raw_paho(port: int, payloads: list[tuple[str, bytes]], window: int = 1000) -> float:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw")
    client.max_inflight_messages_set(0)
    inflight: set[int] = set()
    client.on_publish = lambda _c, _u, mid, _r, _p: inflight.discard(mid)
    connected = []
    client.on_connect = lambda *_: connected.append(True)
    client.connect("127.0.0.1", port)
    while not connected:
        client.loop(0.05)
    started = time.perf_counter()
    for topic, payload in payloads:
        while len(inflight) >= window:
            client.loop(0.01)
        inflight.add(client.publish(topic, payload, qos=1, retain=True).mid)
    while inflight:
        client.loop(0.01)
    elapsed = time.perf_counter() - started
    client.disconnect()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=3, help="configuration keys per device")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the database (path printed) for profiling")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--db", metavar="URL", help="a PostgreSQL server to use (implies --backend postgresql)")
    parser.add_argument("--processes", type=int, help="launch --processes N (default: launch's own default)")
    args = parser.parse_args()
    backend = "postgresql" if args.db else args.backend
    n = args.devices
    work = Path(tempfile.mkdtemp(prefix="campaignctl-bench-"))
    broker, port = start_mosquitto(work)
    server = start_postgres() if backend == "postgresql" and not args.db else None
    figures: dict[str, float] = {}
    try:
        db = new_database(backend, work, server, args.db)
        values = mqtt_fleet(work, db, n, port, args.keys)
        figures["import_s"], _, _ = campaignctl("devices", "import", str(work / "devices.csv"), db=db)
        campaignctl("create", "-f", str(work / "campaign.yaml"), db=db)

        processes = ["--processes", str(args.processes)] if args.processes else []
        figures["launch_wall_s"], rss, out = campaignctl("launch", "bench", "-o", "json", *processes, db=db)
        job = json.loads(out)
        assert job["status"] == "success" and job["counts"]["delivered"] == n, job["counts"]
        figures["write_s"] = iso_seconds(job["created_at"], job["written_at"])  # items, then entries
        figures["deliver_s"] = iso_seconds(job["written_at"], job["finished_at"])
        figures["launch_peak_rss_mb"] = rss / 1024

        runs = [campaignctl("status", "bench", "-o", "json", db=db)[0] for _ in range(3)]
        figures["status_json_s"] = statistics.median(runs)
        figures["status_table_s"] = statistics.median(campaignctl("status", "bench", db=db)[0] for _ in range(3))
        figures["list_s"] = statistics.median(campaignctl("list", db=db)[0] for _ in range(3))
        figures["help_s"] = min(campaignctl("--help", db=db)[0] for _ in range(5))

        # The raw limits, same machine, same run.
        figures["raw_db_s"] = (
            raw_sqlite(work / "raw.db", n, values)
            if backend == "sqlite"
            else raw_postgres(new_database(backend, work, server, args.db), n, values)
        )
        payload_values = ",".join(f'"{k}":{v}' for k, v in sorted(values.items()))
        payloads = [
            (f"raw/sensor-{i:07d}/config", f'{{"configuration":{{{payload_values}}},"version":7}}'.encode())
            for i in range(n)
        ]
        figures["raw_paho_s"] = raw_paho(port, payloads)
    finally:
        broker.terminate()
        broker.wait()
        if server is not None and not args.keep:
            server.stop()  # type: ignore[attr-defined]
        if args.keep:
            print(f"database kept: {db}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    figures["write_vs_raw"] = figures["write_s"] / figures["raw_db_s"]
    figures["deliver_vs_raw"] = figures["deliver_s"] / figures["raw_paho_s"]
    if args.json:
        print(json.dumps({"devices": n, "keys": args.keys, "backend": backend, **figures}, indent=2))
        return
    rows = [
        ("devices imported (CSV)", f"{figures['import_s']:.2f} s", ""),
        (
            "write step (desired entries + job items)",
            f"{figures['write_s']:.2f} s",
            f"{figures['write_vs_raw']:.2f}× raw {'sqlite3' if backend == 'sqlite' else 'COPY'} "
            f"({figures['raw_db_s']:.2f} s), target ≤ 3×",
        ),
        (
            "delivery step (QoS 1, retained)",
            f"{figures['deliver_s']:.2f} s",
            f"{figures['deliver_vs_raw']:.2f}× raw paho ({figures['raw_paho_s']:.2f} s), target ≤ 2×",
        ),
        ("launch command, wall", f"{figures['launch_wall_s']:.2f} s", "target ≤ 5 s at 100k"),
        ("launch peak memory", f"{figures['launch_peak_rss_mb']:.0f} MB", "target < 500 MB"),
        (
            "status (table)",
            f"{figures['status_table_s']:.2f} s",
            f"target < 0.5 s; start-up (campaignctl list): {figures['list_s']:.2f} s",
        ),
        ("status -o json", f"{figures['status_json_s']:.2f} s", "target < 1 s"),
        ("campaignctl --help", f"{figures['help_s'] * 1000:.0f} ms", "target < 200 ms"),
    ]
    print(f"campaign launch on {backend}, {n} devices × {args.keys} keys, mosquitto on 127.0.0.1")
    for name, value, note in rows:
        print(f"  {name:<44} {value:>10}   {note}")


if __name__ == "__main__":
    main()
