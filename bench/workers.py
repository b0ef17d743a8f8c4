"""Benchmark of distributed delivery: one campaign delivered by 1, 2, 4 worker processes.

    python bench/workers.py [--devices 100000] [--workers 1 2 4] [--backend sqlite|postgresql|both]

Creates N devices on one MQTT interface (a private mosquitto on 127.0.0.1); for each
worker count, launches a campaign with ``launch --detach`` while ``campaignctl run
--processes W`` runs, and measures the delivery: from the end of the write step to the
last device delivered (the job's own timestamps), and the wall clock from launch to the
campaign completed. The speed-up is against one worker, same backend, same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import campaignctl, iso_seconds, new_database, start_mosquitto, start_postgres


def run_once(db: str, name: str, workers: int, shard_size: int) -> dict[str, float]:
    env = dict(os.environ, CAMPAIGNCTL_DB=db)
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignctl", "run", "--interval", "0.2", "--processes", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.5)  # the workers import and connect before the clock starts
        started = time.perf_counter()
        _, _, out = campaignctl("launch", name, "--detach", "--shard-size", str(shard_size), "-o", "json", db=db)
        job_id = json.loads(out)["id"]
        while True:
            status = json.loads(campaignctl("status", name, "--limit", "0", "-o", "json", db=db)[2])
            if status["status"] == "completed":
                break
            time.sleep(0.2)
        wall = time.perf_counter() - started
        job = json.loads(campaignctl("jobs", "show", str(job_id), "-o", "json", db=db)[2])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert job["counts"]["delivered"] == job["total"], job["counts"]
    return {
        "deliver_s": iso_seconds(job["written_at"], job["finished_at"]),
        "wall_s": wall,
        "workers_seen": len({s["worker"] for s in job["shards"]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--shard-size", type=int, default=2000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    work = Path(tempfile.mkdtemp(prefix="campaignctl-bench-"))
    broker, port = start_mosquitto(work)
    server = start_postgres() if "postgresql" in backends else None
    results: dict[str, dict[int, dict[str, float]]] = {}
    try:
        (work / "fleet.yaml").write_text(
            f"interfaces:\n  broker: {{type: mqtt, url: 'mqtt://127.0.0.1:{port}', topic_prefix: bench}}\n"
            "device_types:\n  sensor-v2: {}\ndevices: []\n"
        )
        with open(work / "devices.csv", "w") as f:
            f.write("name,type,interface\n")
            f.writelines(f"sensor-{i:07d},sensor-v2,broker\n" for i in range(args.devices))
        for backend in backends:
            db = new_database(backend, work, server)
            campaignctl("devices", "import", str(work / "fleet.yaml"), db=db)
            campaignctl("devices", "import", str(work / "devices.csv"), db=db)
            results[backend] = {}
            for workers in args.workers:
                name = f"bench-{workers}"
                (work / f"{name}.yaml").write_text(
                    f"name: {name}\ndevices: {{selector: {{type: sensor-v2}}}}\n"
                    f"configurations: {{url: 'https://assets.example.com/fw/{name}.bin', mode: eco}}\n"
                )
                campaignctl("create", "-f", str(work / f"{name}.yaml"), db=db)
                results[backend][workers] = run_once(db, name, workers, args.shard_size)
    finally:
        broker.terminate()
        broker.wait()
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"distributed delivery, {args.devices} devices, shards of {args.shard_size}, mosquitto on 127.0.0.1, "
        f"{os.cpu_count()} cores"
    )
    for backend, by_workers in results.items():
        base = by_workers[min(by_workers)]["deliver_s"]
        for workers, r in by_workers.items():
            print(
                f"  {backend:<10} {workers} worker(s): delivery {r['deliver_s']:6.2f} s "
                f"(speed-up {base / r['deliver_s']:.2f}×, {r['workers_seen']:.0f} worker(s) delivered shards), "
                f"launch to completed {r['wall_s']:6.2f} s"
            )


if __name__ == "__main__":
    main()
