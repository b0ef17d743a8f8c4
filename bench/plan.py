"""``campaignctl plan`` of a 100k-device campaign, with and without a competing campaign.

    python bench/plan.py [--devices 100000] [--keys 3] [--backend sqlite|postgresql]

The campaign sets 3 keys on every device in batches with canaries and a bake time;
2,000 devices already hold one of its values. The second figure adds a running
campaign that sets key_0 on every device (100k conflicts listed). Each figure is the
real command (table, and -o json to a file) with its peak RSS; the raw reference is
the same rows read with the bare driver (sqlite3 or psycopg) in the same run — the
devices' names and the campaign keys' entries — plus `campaignctl db status`, the
command start-up.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import campaignctl, free_port, mqtt_fleet, new_database, start_postgres


def raw_read(db: str, keys: list[str]) -> float:
    """The rows a plan must read, with the bare driver."""
    started = time.perf_counter()
    marks = ", ".join(f"'{k}'" for k in keys)
    if db.startswith("postgresql"):
        import psycopg

        with psycopg.connect(db.replace("postgresql+psycopg", "postgresql")) as conn:
            conn.execute("SELECT id, name FROM device").fetchall()
            conn.execute(f"SELECT device_id, key, desired FROM device_config WHERE key IN ({marks})").fetchall()
    else:
        import sqlite3

        conn = sqlite3.connect(db)
        conn.execute("SELECT id, name FROM device").fetchall()
        conn.execute(f"SELECT device_id, key, desired FROM device_config WHERE key IN ({marks})").fetchall()
        conn.close()
    return time.perf_counter() - started


def already_set(url: str, value: str, count: int) -> None:
    """``count`` devices already hold key_1's value, as a user would have set it."""
    from campaignctl import db, store

    engine = db.create_engine(url)
    with db.write(engine) as conn:
        revision = store.next_revision(conn)
        store.write_desired(
            conn,
            [(device_id, "key_1", value, db.utcnow(), revision, "user", False) for device_id in range(1, count + 1)],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="campaignctl-plan-"))
    server = start_postgres() if args.backend == "postgresql" else None
    rows: list[tuple[str, float, int]] = []
    try:
        db = new_database(args.backend, work, server)
        mqtt_fleet(work, db, args.devices, free_port(), args.keys)  # no broker: plan delivers nothing
        campaignctl("devices", "import", str(work / "devices.csv"), db=db)
        text = (work / "campaign.yaml").read_text()
        (work / "campaign.yaml").write_text(
            text + "rollout:\n  batches: [1%, 10%, 50%, 100%]\n  canary: {tags: {ring: canary}}\n"
            "  bake_time: 30m\n  max_per_minute: 20000\n"
        )
        campaignctl("create", "-f", str(work / "campaign.yaml"), db=db)
        already_set(db, text.split("key_1: ")[1].split("\n")[0], 2000)
        keys = [f"key_{k}" for k in range(args.keys)]
        rows.append(("raw driver read (reference)", raw_read(db, keys), 0))
        seconds, rss, _ = campaignctl("db", "status", db=db)
        rows.append(("db status (start-up)", seconds, rss))
        for label, command in [("plan (table)", ("plan", "bench")), ("plan -o json", ("plan", "bench", "-o", "json"))]:
            seconds, rss, _ = campaignctl(*command, db=db)
            rows.append((label, seconds, rss))
        # A running campaign setting key_0 on every device: every device conflicts.
        (work / "other.yaml").write_text(
            "name: other\ndevices: {selector: {type: sensor-v2}}\nconfigurations: {key_0: 1}\n"
        )
        campaignctl("create", "-f", str(work / "other.yaml"), db=db)
        campaignctl("launch", "other", "--detach", db=db)
        for label, command in [
            ("plan, 100k conflicts (table)", ("plan", "bench")),
            ("plan, 100k conflicts -o json", ("plan", "bench", "-o", "json")),
        ]:
            seconds, rss, _ = campaignctl(*command, db=db)
            rows.append((label, seconds, rss))
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)
    print(f"plan of {args.devices} devices × {args.keys} keys on {args.backend}")
    for label, seconds, rss in rows:
        print(f"  {label:<32} {seconds:7.2f} s" + (f"  {rss / 1024:6.0f} MB" if rss else ""))


if __name__ == "__main__":
    main()
