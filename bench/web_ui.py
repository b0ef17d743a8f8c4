"""The data of the web front-end's pages for a campaign of 100,000 devices.

    python bench/web_ui.py [--devices 100000] [--backend sqlite|postgresql]

Imports the devices (an MQTT interface nobody listens on: the launch only creates the
job), creates and launches a campaign on all of them (as the Launch button does), then
times what a page read costs the server (``campaignctl.web.views``, in this process):
the campaign page (summary, chart, first page of devices), its last page, the last page
of a status filter, a name search, the campaigns list (its supervision totals counted,
then read again from their cache, then counted once every device is delivered), and the
chart's query alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import campaignctl, new_database, start_postgres


def timed(label: str, call: object) -> None:
    started = time.perf_counter()
    call()  # type: ignore[operator]
    print(f"{label:<34} {time.perf_counter() - started:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    n = args.devices
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = start_postgres() if args.backend == "postgresql" else None
        try:
            target = new_database(args.backend, work, server)
            (work / "fleet.yaml").write_text(
                "interfaces: {broker: {type: mqtt, url: 'mqtt://127.0.0.1:1', topic_prefix: bench}}\n"
                "device_types: {sensor: {}}\ndevices: []\n"
            )
            campaignctl("devices", "import", str(work / "fleet.yaml"), db=target)
            (work / "devices.csv").write_text(
                "name,type,interface\n" + "".join(f"s-{i:06d},sensor,broker\n" for i in range(n))
            )
            campaignctl("devices", "import", str(work / "devices.csv"), db=target)
            (work / "eco.yaml").write_text(
                "name: eco\ndevices: {selector: {type: sensor}}\nconfigurations: {mode: eco}\n"
            )
            campaignctl("create", "-f", str(work / "eco.yaml"), db=target)

            from campaignctl import db
            from campaignctl.supervision import campaign_status
            from campaignctl.web import chart, views

            engine = db.create_engine(target)
            views.ACTIONS["launch"](engine, "eco")
            last = (n - 1) // views.PAGE_SIZE + 1
            print(f"{n} devices, {args.backend}")
            for label, query in (
                ("campaign page (page 1)", {"status": "", "q": "", "page": 1}),
                (f"last page ({last})", {"status": "", "q": "", "page": last}),
                ("status pending, last page", {"status": "pending", "q": "", "page": last}),
                ("search 's-09999'", {"status": "", "q": "s-09999", "page": 1}),
            ):
                timed(label, lambda q=query: views.campaign(engine, "eco", q))
            timed("campaigns list", lambda: views.campaigns(engine))
            # Within the cache's time (5 s for a running campaign) the totals are reused.
            timed("campaigns list, cached", lambda: views.campaigns(engine))
            status = campaign_status(engine, "eco", limit=0)
            # The list once every document is delivered (as the engine marks them when the
            # broker takes them): each device is compared with what it reported. A new
            # engine: a server's cache of the counts is its engine's.
            with db.write(engine) as conn:
                db.run(
                    conn,
                    "UPDATE job_item SET status = 'delivered', delivered_at = :now, updated_at = :now",
                    {"now": db.utcnow()},
                )
            delivered = db.create_engine(target)
            timed("campaigns list, delivered", lambda: views.campaigns(delivered))
            delivered.dispose()
            with db.read(engine) as conn:
                timed(
                    "chart query",
                    lambda: chart.convergence(conn, status["job"]["id"], status["job"]["created_at"], n),
                )
            engine.dispose()
        finally:
            if server is not None:
                server.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
