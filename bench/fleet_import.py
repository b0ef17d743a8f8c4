"""Benchmark of a fleet import from YAML and from CSV, against raw readers in the same run.

    python bench/fleet_import.py [--devices 100000] [--backend sqlite|postgresql] [--db URL]

Writes a fleet of N devices (each with two tags) as a YAML manifest and as a CSV file, and
imports each into a fresh database with the real command (`campaignctl devices import`),
reporting wall time and peak memory. As references: `campaignctl --help` (start-up), and,
in a process of their own, PyYAML's `yaml.load` with its C loader on the same YAML text,
campaignctl's YAML reader alone (`YamlDocument`), and `csv.reader` over the same CSV text.

``--backend postgresql`` starts a private PostgreSQL server on 127.0.0.1; ``--db
postgresql://USER@HOST/DB`` uses that server instead (a new database is created on it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import new_database, start_postgres

HEAD = """interfaces:
  broker:
    type: mqtt
    url: mqtt://127.0.0.1:1883
    topic_prefix: bench
device_types:
  sensor-v2:
    firmware_types:
      app: {version_key: app_version, url_key: app_url, token_key: app_token}
"""

# Run in a process of its own: (wall seconds, peak RSS in KiB) of reading the file.
REFERENCE = """
import csv, io, resource, sys, time
kind, path = sys.argv[1], sys.argv[2]
text = open(path, encoding="utf-8").read()
started, cpu = time.perf_counter(), time.process_time()
if kind == "pyyaml":
    import yaml
    yaml.load(text, Loader=yaml.CSafeLoader)
elif kind == "reader":
    from campaignctl.yamlfile import YamlDocument
    YamlDocument(text, path)
else:
    for row in csv.reader(io.StringIO(text)):
        pass
print(time.perf_counter() - started, time.process_time() - cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def campaignctl(*args: str, db: str) -> tuple[float, float, int]:
    """Run the real command: (wall seconds, CPU seconds, peak RSS in KiB) of its process.

    CPU time is reported beside wall time: on a shared machine, wall time also counts the
    time other processes held the cores."""
    env = dict(os.environ, CAMPAIGNCTL_DB=db)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignctl", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"campaignctl {' '.join(args)} failed: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def write_fleet(work: Path, devices: int) -> tuple[Path, Path, Path]:
    """The YAML manifest, the interfaces and types alone (for the CSV), the CSV file."""

    def tags(i: int) -> tuple[str, int]:
        return ("lyon" if i % 2 else "paris"), i % 7

    yaml_path, head_path, csv_path = work / "fleet.yaml", work / "head.yaml", work / "devices.csv"
    head_path.write_text(HEAD)
    with yaml_path.open("w") as f:
        f.write(HEAD + "devices:\n")
        for i in range(devices):
            site, floor = tags(i)
            f.write(
                f"  - {{name: sensor-{i:07d}, type: sensor-v2, interface: broker, "
                f"tags: {{site: {site}, floor: {floor}}}}}\n"
            )
    with csv_path.open("w") as f:
        f.write("name,type,interface,tags\n")
        for i in range(devices):
            site, floor = tags(i)
            f.write(f"sensor-{i:07d},sensor-v2,broker,site={site};floor={floor}\n")
    return yaml_path, head_path, csv_path


def reference(kind: str, path: Path) -> tuple[float, float, int]:
    out = subprocess.run(
        [sys.executable, "-c", REFERENCE, kind, str(path)], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--db", help="a postgresql:// URL of a server to use (a database is created on it)")
    args = parser.parse_args()
    backend = "postgresql" if args.db else args.backend
    work = Path(tempfile.mkdtemp(prefix="campaignctl-bench-"))
    server = start_postgres() if backend == "postgresql" and not args.db else None
    try:
        yaml_path, head_path, csv_path = write_fleet(work, args.devices)
        rows: list[tuple[str, float, float, int]] = []
        db = new_database(backend, work, server, args.db)
        rows.append(("campaignctl --help", *campaignctl("--help", db=db)))
        rows.append(
            (
                f"devices import fleet.yaml ({args.devices:,} devices)",
                *campaignctl("devices", "import", str(yaml_path), db=db),
            )
        )
        rows.append(("  again, nothing changed", *campaignctl("devices", "import", str(yaml_path), db=db)))
        db = new_database(backend, work, server, args.db)
        campaignctl("devices", "import", str(head_path), db=db)
        rows.append(
            (
                f"devices import devices.csv ({args.devices:,} devices)",
                *campaignctl("devices", "import", str(csv_path), db=db),
            )
        )
        rows.append(("  again, nothing changed", *campaignctl("devices", "import", str(csv_path), db=db)))
        rows.append(("reference: yaml.load, CSafeLoader", *reference("pyyaml", yaml_path)))
        rows.append(("reference: campaignctl's YAML reader alone", *reference("reader", yaml_path)))
        rows.append(("reference: csv.reader", *reference("csv", csv_path)))
        print(f"backend: {backend}; CPU = user + system time of the process; peak RSS of the process")
        print(f"{'step':<50} {'wall s':>8} {'CPU s':>8} {'peak MB':>8}")
        for name, seconds, cpu, rss in rows:
            print(f"{name:<50} {seconds:>8.2f} {cpu:>8.2f} {rss / 1024:>8.0f}")
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"(bench ran {time.perf_counter() - started:.0f} s)")
