"""Webhook deliveries per second against a local API that answers after 50 ms.

    python bench/webhook.py [--devices 2000] [--latency-ms 50] [--concurrency 64 256]

Each run launches a real campaign whose devices are on a webhook interface; the API runs
in its own process. Concurrency 1 is the sequential reference (on fewer devices: at 50 ms
a request it is 20 per second whatever the fleet).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import campaignctl, free_port, iso_seconds


def run(work: Path, port: int, devices: int, concurrency: int) -> float:
    db = work / f"webhook-{concurrency}.db"
    (work / "fleet.yaml").write_text(
        "interfaces:\n  api:\n    type: webhook\n"
        f"    url: 'http://127.0.0.1:{port}/things/{{device}}/desired'\n    method: PUT\n"
        f"    concurrency: {concurrency}\ndevice_types:\n  thing: {{}}\ndevices: []\n"
    )
    with open(work / "devices.csv", "w") as f:
        f.write("name,type,interface,tags\n")
        f.writelines(f"thing-{i:06d},thing,api,\n" for i in range(devices))
    campaignctl("devices", "import", str(work / "fleet.yaml"), db=db)
    campaignctl("devices", "import", str(work / "devices.csv"), db=db)
    (work / "c.yaml").write_text(
        "name: push\ndevices: {selector: {type: thing}}\nconfigurations: {mode: eco, interval: 30}\n"
    )
    campaignctl("create", "-f", str(work / "c.yaml"), db=db)
    _, _, out = campaignctl("launch", "push", "-o", "json", db=db)
    job = json.loads(out)
    assert job["counts"]["delivered"] == devices, job["counts"]
    return devices / iso_seconds(job["written_at"], job["finished_at"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="campaignctl-bench-"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "latency_server.py"), str(port), str(args.latency_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        sequential = run(work, port, max(20, int(3000 / args.latency_ms)), 1)
        ideal = 1000 / args.latency_ms
        print(f"webhook deliveries, API latency {args.latency_ms:g} ms, on 127.0.0.1")
        print(f"  {'concurrency 1 (sequential)':<28} {sequential:>8.0f} /s   (ideal {ideal:.0f}/s)")
        for concurrency in args.concurrency:
            rate = run(work, port, args.devices, concurrency)
            print(
                f"  {f'concurrency {concurrency}':<28} {rate:>8.0f} /s   "
                f"{rate / sequential:.0f}× sequential, {rate / (ideal * concurrency):.0%} of ideal "
                f"({args.devices} devices)"
            )
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
