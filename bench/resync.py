"""Benchmark of ``devices resync`` after a broker lost its retained messages, against the
delivery step of the launch that first sent the same documents.

    python bench/resync.py [--devices 100000] [--keys 3]

Creates N devices on one MQTT interface (a private mosquitto on 127.0.0.1, without
persistence), launches a campaign, restarts the broker (its retained store is then
empty), runs the real ``campaignctl devices resync`` and checks, with a fresh subscriber,
that every device's document is retained again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import campaignctl, iso_seconds, mqtt_fleet, new_database, start_mosquitto


def restart(broker: subprocess.Popen, work: Path, port: int) -> subprocess.Popen:
    """The same mosquitto, stopped and started again: without persistence, it is empty."""
    broker.terminate()
    broker.wait()
    proc = subprocess.Popen(broker.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not restart")


def retained_count(port: int, expected: int, timeout: float = 60.0) -> int:
    """How many retained documents a new subscriber to ``bench/+/config`` gets."""
    import paho.mqtt.client as mqtt

    got: set[str] = set()
    done = threading.Event()
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe("bench/+/config", qos=1)

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        got.add(message.topic)
        if len(got) >= expected:
            done.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.wait(timeout)
    client.disconnect()
    client.loop_stop()
    return len(got)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=3)
    args = parser.parse_args()
    n = args.devices
    work = Path(tempfile.mkdtemp(prefix="campaignctl-bench-"))
    broker, port = start_mosquitto(work)
    try:
        db = new_database("sqlite", work, None)
        mqtt_fleet(work, db, n, port, args.keys)
        campaignctl("devices", "import", str(work / "devices.csv"), db=db)
        campaignctl("create", "-f", str(work / "campaign.yaml"), db=db)
        _, _, out = campaignctl("launch", "bench", "-o", "json", db=db)
        job = json.loads(out)
        deliver_s = iso_seconds(job["written_at"], job["finished_at"])

        broker = restart(broker, work, port)
        lost = retained_count(port, 1, timeout=2)
        wall, rss, out = campaignctl("devices", "resync", "-o", "json", db=db)
        result = json.loads(out)
        restored = retained_count(port, n)
        assert result["resent"] == n and restored == n and lost == 0, (result, restored, lost)
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"devices resync of {n} devices × {args.keys} keys, SQLite, mosquitto on 127.0.0.1")
    print(f"  {'launch delivery step (written_at → finished_at)':<50} {deliver_s:>7.2f} s")
    print(f"  {'devices resync, wall clock, start-up included':<50} {wall:>7.2f} s")
    print(f"  {'devices resync peak memory':<50} {rss / 1024:>7.0f} MB")


if __name__ == "__main__":
    main()
