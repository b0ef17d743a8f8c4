"""A million-device campaign on SQLite, step by step: time and peak memory of each command.

    python bench/million.py [--devices 1000000] [--keys 3]

Creates the devices from CSV on one MQTT interface (a private mosquitto on 127.0.0.1),
launches a campaign setting 3 keys on all of them, then reads its status as a table and
as JSON (to a file). Each figure is the real command's wall time and its own peak RSS
(the launch's delivery processes, when it starts some, are measured apart by the
kernel and not included); the raw reference is `campaignctl db status`, the start-up
of a command that reads next to nothing, measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import campaignctl, mqtt_fleet, new_database, start_mosquitto


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the database (path printed)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="campaignctl-million-"))
    broker, port = start_mosquitto(work)
    steps: list[tuple[str, float, int]] = []
    try:
        db = new_database("sqlite", work, None)
        mqtt_fleet(work, db, args.devices, port, args.keys)
        for label, command in [
            ("devices import (CSV)", ("devices", "import", str(work / "devices.csv"))),
            ("create", ("create", "-f", str(work / "campaign.yaml"))),
            ("launch", ("launch", "bench")),
            ("status (table)", ("status", "bench")),
            ("status -o json", ("status", "bench", "-o", "json")),
            ("db status (start-up reference)", ("db", "status")),
        ]:
            seconds, rss, _ = campaignctl(*command, db=db)
            steps.append((label, seconds, rss))
    finally:
        broker.terminate()
        broker.wait()
        if args.keep:
            print(f"database kept: {db}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{args.devices} devices × {args.keys} keys on SQLite, mosquitto on 127.0.0.1")
    for label, seconds, rss in steps:
        print(f"  {label:<28} {seconds:8.2f} s  {rss / 1024:7.0f} MB")


if __name__ == "__main__":
    main()
