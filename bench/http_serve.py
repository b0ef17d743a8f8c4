"""HTTP devices served per second by `campaignctl serve`, under the fleet simulator.

    python bench/http_serve.py [--devices 1000] [--poll-interval 0.2] [--duration 10]

`serve` and `simulate` run as the real commands, in two processes on this machine. The
simulated devices poll as fast as --poll-interval asks, so the figure is the server's
throughput when it is the bottleneck. Halfway, an OTA campaign is launched to the whole
fleet; the time until every device is `valid` is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import campaignctl, free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--poll-interval", type=float, default=0.2)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="campaignctl-bench-"))
    db = work / "http.db"
    port = free_port()
    env = dict(os.environ, CAMPAIGNCTL_DB=str(db))
    procs: list[subprocess.Popen] = []
    try:
        (work / "fleet.yaml").write_text(
            f"interfaces:\n  devapi: {{type: http, url: 'http://127.0.0.1:{port}'}}\n"
            "device_types:\n  cam:\n    firmware_types:\n      app: {version_key: app_version, url_key: app_url}\n"
            "devices: []\n"
        )
        with open(work / "devices.csv", "w") as f:
            f.write("name,type,interface,tags\n")
            f.writelines(f"cam-{i:05d},cam,devapi,\n" for i in range(args.devices))
        campaignctl("devices", "import", str(work / "fleet.yaml"), db=db)
        campaignctl("devices", "import", str(work / "devices.csv"), db=db)
        campaignctl(
            "firmwares",
            "add",
            "--device-type",
            "cam",
            "--firmware-type",
            "app",
            "--version",
            "2.0",
            "--url",
            "https://assets.example.com/app-2.0.bin",
            db=db,
        )
        (work / "ota.yaml").write_text(
            "name: ota\ndevices: {selector: {type: cam}}\nfirmware: {type: app, version: '2.0'}\n"
        )
        campaignctl("create", "-f", str(work / "ota.yaml"), db=db)
        cmd = [sys.executable, "-m", "campaignctl"]
        procs.append(
            subprocess.Popen([*cmd, "serve", "--port", str(port), "--no-mqtt"], env=env, stderr=subprocess.DEVNULL)
        )
        time.sleep(1.5)
        simulator = subprocess.Popen(
            [
                *cmd,
                "simulate",
                "--poll-interval",
                str(args.poll_interval),
                "--apply-delay",
                "0",
                "--duration",
                str(args.duration),
                "-o",
                "json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append(simulator)
        time.sleep(args.duration / 2)
        launched = time.monotonic()
        campaignctl("launch", "ota", db=db)
        converged = None
        # Watched with a plain query: a status command every 0.2 s would take a core.
        watch = sqlite3.connect(db, timeout=30)
        while time.monotonic() - launched < args.duration:
            valid = watch.execute(
                "SELECT count(*) FROM device_config WHERE key = 'app_version' AND reported = '\"2.0\"'"
            ).fetchone()[0]
            if valid == args.devices:
                converged = time.monotonic() - launched
                break
            time.sleep(0.1)
        watch.close()
        stats = json.loads(simulator.communicate(timeout=args.duration * 3)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    offered = args.devices / args.poll_interval
    print(
        f"campaignctl serve under the simulator: {args.devices} HTTP devices polling every "
        f"{args.poll_interval:g}s (offered {offered:.0f} req/s) for {args.duration:g}s"
    )
    print(
        f"  configuration requests served  {stats['polls'] / args.duration:>8.0f} /s   "
        f"({stats['polls']} answered, {stats['errors']} errors)"
    )
    print(f"  state reports recorded         {stats['reports']:>8d}")
    print(
        f"  OTA launch → all {args.devices} valid  "
        + (f"{converged:>8.1f} s" if converged is not None else "   not within the run")
    )


if __name__ == "__main__":
    main()
