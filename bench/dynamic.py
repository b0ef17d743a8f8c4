"""The engine's pass over a dynamic campaign on 100k devices of which 5k match its
selector: with nobody new, and admitting 1,000 devices imported since.

    python bench/dynamic.py [--devices 100000] [--matching 5000] [--joiners 1000] [--backend sqlite|postgresql]

The fleet polls over HTTP (nothing to push: the figures are the database's work). The
campaign selects ``{type: sensor-v2, tags: {site: lyon}}`` with ``dynamic: true``: the
first ``--matching`` devices are in Lyon, the others in Paris. It is launched and its
devices written by a first ``tick``, marked delivered (as if they had fetched their
documents) and promoted by a second. Then, each the real command:

- ``tick`` with nobody new, once the batch is promoted (best of 3);
- in process, best of 5: the look for joiners (``NOT EXISTS`` over the devices without
  an item, their tags read: what every idle pass cost before the fleet's mark), and what
  an idle pass costs now (the mark, compared with the one kept after the last look);
- ``tick`` after ``--joiners`` devices were imported: admitted, written as a new batch.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import campaignctl, new_database, start_postgres

FLEET = "interfaces:\n  web: {type: http}\ndevice_types:\n  sensor-v2: {}\ndevices: []\n"
CAMPAIGN = (
    "name: dyn\ndevices: {selector: {type: sensor-v2, tags: {site: lyon}}, dynamic: true}\n"
    "configurations: {mode: eco}\n"
)


def devices_csv(path: Path, first: int, count: int, matching: int) -> str:
    path.write_text(
        "name,type,interface,tags\n"
        + "".join(
            f"s-{i:07d},sensor-v2,web,site={'lyon' if i < matching else 'paris'}\n" for i in range(first, first + count)
        )
    )
    return str(path)


def all_delivered(db: str) -> None:
    """Every written device fetched its document (the bare driver: no HTTP client needed),
    so that the next tick promotes the batch and the campaign waits for joiners."""
    statement = (
        "UPDATE job_item SET status = 'delivered', delivered_at = '2026-12-01T00:00:00.000000Z' "
        "WHERE status = 'syncing'"
    )
    if db.startswith("postgresql"):
        import psycopg

        with psycopg.connect(db.replace("postgresql+psycopg", "postgresql")) as conn:
            conn.execute(statement)
    else:
        import sqlite3

        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute(statement)
        conn.close()


def idle_costs(db: str) -> tuple[float, float]:
    """In process, best of 5 each: the look for joiners when nobody joins, and the
    idle pass's check of the fleet's mark."""
    from campaignctl import db as cdb
    from campaignctl import dynamic
    from campaignctl.campaigns import get_spec

    engine = cdb.create_engine(db)
    with cdb.read(engine) as conn:
        spec = get_spec(conn, "dyn")[1]
        job = cdb.run(conn, "SELECT max(id) FROM job").scalar()
    ctx = types.SimpleNamespace(job_id=job, campaign="dyn", engine=engine)

    def best(step: Any) -> float:
        fastest = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            with cdb.read(engine) as conn:
                step(conn)
            fastest = min(fastest, time.perf_counter() - started)
        return fastest

    def look(conn: Any) -> None:
        assert not dynamic._newcomers(conn, ctx, spec, 1)

    def check(conn: Any) -> None:
        assert dynamic._looked_at(conn, ctx, dynamic._fleet_mark(conn))  # the tick before kept it

    costs = best(look), best(check)
    engine.dispose()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--matching", type=int, default=5_000)
    parser.add_argument("--joiners", type=int, default=1_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dynamic-"))
    server = start_postgres() if args.backend == "postgresql" else None
    try:
        db = new_database(args.backend, work, server)
        (work / "fleet.yaml").write_text(FLEET)
        (work / "c.yaml").write_text(CAMPAIGN)
        campaignctl("devices", "import", str(work / "fleet.yaml"), db=db)
        campaignctl("devices", "import", devices_csv(work / "a.csv", 0, args.devices, args.matching), db=db)
        campaignctl("create", "-f", str(work / "c.yaml"), db=db)
        campaignctl("launch", "dyn", "--detach", db=db)
        first, _, _ = campaignctl("tick", db=db)
        all_delivered(db)
        campaignctl("tick", db=db)  # the batch promoted: the first look for joiners, the fleet's mark kept
        print(
            f"{args.backend}, {args.devices} devices ({args.matching} matching): first tick (writes them all) {first:.2f} s"
        )
        idle = min(campaignctl("tick", db=db)[0] for _ in range(3))
        startup = min(campaignctl("db", "status", db=db)[0] for _ in range(3))
        print(f"tick, nobody new: {idle:.2f} s (the command; `db status`, its start-up: {startup:.2f} s)")
        look, check = idle_costs(db)
        print(f"look for joiners, nobody new (each idle pass before): {look * 1000:.1f} ms")
        print(f"idle pass's check of the fleet's mark (each idle pass now): {check * 1000:.1f} ms")
        campaignctl(
            "devices",
            "import",
            devices_csv(work / "b.csv", args.devices, args.joiners, args.devices + args.joiners),
            db=db,
        )
        joined, _, _ = campaignctl("tick", db=db)
        print(f"tick admitting {args.joiners} new devices (a new batch, written): {joined:.2f} s")
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
