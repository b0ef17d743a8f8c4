"""``GET /metrics`` of a real ``campaignctl serve`` while a 100k-device campaign runs.

    python bench/metrics.py [--devices 100000]

Imports 100,000 devices on an ``http`` interface (they poll: the launch writes every
document and waits, no broker needed), launches a campaign on all of them, starts
``serve`` and times scrapes: the first (the database figures are read), the next ones
within the 5 s cache, and one after it. The reference, in the same run, is
``campaignctl status NAME`` — the same aggregate over the same devices, plus a
command's start-up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import campaignctl, free_port, new_database


def scrape(port: int) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as answer:
        body = answer.read()
    return time.perf_counter() - started, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="campaignctl-metrics-"))
    port = free_port()
    rows: list[tuple[str, float]] = []
    server = None
    try:
        db = new_database("sqlite", work, None)
        (work / "fleet.yaml").write_text(
            f"interfaces:\n  poll: {{type: http, url: 'http://127.0.0.1:{port}'}}\n"
            "device_types:\n  sensor-v2: {}\ndevices: []\n"
        )
        campaignctl("devices", "import", str(work / "fleet.yaml"), db=db)
        with open(work / "devices.csv", "w") as f:
            f.write("name,type,interface\n")
            f.writelines(f"sensor-{i:07d},sensor-v2,poll\n" for i in range(args.devices))
        campaignctl("devices", "import", str(work / "devices.csv"), db=db)
        (work / "c.yaml").write_text(
            "name: bench\ndevices: {selector: {type: sensor-v2}}\nconfigurations: {mode: eco}\n"
            "expected_state: {mode: eco}\n"
        )
        campaignctl("create", "-f", str(work / "c.yaml"), db=db)
        campaignctl("launch", "bench", db=db)
        seconds, _rss, _ = campaignctl("status", "bench", db=db)
        rows.append(("status table (reference)", seconds))
        env = dict(os.environ, CAMPAIGNCTL_DB=str(db))
        server = subprocess.Popen(
            [sys.executable, "-m", "campaignctl", "serve", "--port", str(port), "--no-mqtt", "--no-engine"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:  # listening: the first request is then the first scrape
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("serve did not start") from None
                time.sleep(0.2)
        first, size = scrape(port)
        rows.append((f"first scrape ({size} bytes)", first))
        cached = [scrape(port)[0] for _ in range(20)]
        rows.append(("scrape within the cache (median of 20)", sorted(cached)[10]))
        time.sleep(5.5)
        rows.append(("scrape after the cache expired", scrape(port)[0]))
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"/metrics with a {args.devices}-device campaign running (SQLite)")
    for label, seconds in rows:
        print(f"  {label:<40} {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
