"""Well-behaved HTTP devices served by `campaignctl serve` while thousands of sockets misbehave.

    python bench/idle_sockets.py [--bad 20000] [--devices 1000] [--poll-interval 2] [--duration 10]

`serve` runs as the real command. The devices poll it over keep-alive connections (with
their ETag, as the device guide says) from this process; the bad sockets come from
other processes: half never send a byte, half send a request line and then a header line
every few seconds without ever ending the headers (slowloris). Whenever the server closes
one, it is opened again: the pressure stays for the whole run.

The devices poll all along, first alone (the reference), then with the bad sockets open,
in the same run; each phase reports requests answered per second, p50/p99 latency (first
byte sent to last byte received, reconnection included) and serve's memory, open files
and CPU. `serve` has the machine's open-file limit and caps its connections below it:
with 20,000 bad sockets against a limit of 20,000, the cap is reached and the connections
idle the longest make room for the devices.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, import_fleet

SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]  # 8 source addresses: enough ports for any run


def raise_own_file_limit(needed: int) -> None:
    """This process needs a descriptor per socket: raise its limit (the hard one too, as root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (ValueError, OSError):
        raise SystemExit(f"need {needed} open files, the limit is {hard}: run as root or raise `ulimit -Hn`") from None


# --- the bad sockets (their own processes) -----------------------------------------------
# Plain non-blocking sockets and one selector: asyncio streams cost too much CPU per
# socket for 20,000 of them on the cores the server runs on.

SLOWLORIS_START = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
SLOWLORIS_DRIP = b"X-Still-There: 1\r\n"


def bad_sockets(port: int, count: int, reconnect_delay: float, counters: multiprocessing.Array, slot: int) -> None:
    """A process of ``count`` misbehaving sockets; counters[3 * slot:] are open, closed by
    the server, failed connection attempts."""
    import heapq
    import selectors
    import socket

    raise_own_file_limit(count + 100)
    selector = selectors.DefaultSelector()
    due: list[tuple[float, int]] = [(0.0, i) for i in range(count)]  # (when, which) to (re)connect
    opened = closed = failed = 0
    next_drip = time.monotonic() + 3

    def connect(which: int) -> None:
        nonlocal opened, failed
        try:
            sock = socket.socket()
        except OSError:
            failed += 1
            heapq.heappush(due, (time.monotonic() + reconnect_delay, which))
            return
        sock.setblocking(False)
        try:
            sock.bind((SOURCES[which % len(SOURCES)], 0))
            sock.connect_ex(("127.0.0.1", port))
        except OSError:
            sock.close()
            failed += 1
            heapq.heappush(due, (time.monotonic() + reconnect_delay, which))
            return
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, [which, False])
        opened += 1

    while True:
        now = time.monotonic()
        while due and due[0][0] <= now:
            connect(heapq.heappop(due)[1])
        for key, events in selector.select(timeout=0.05):
            sock, (which, started) = key.fileobj, key.data
            if events & selectors.EVENT_WRITE and not started:  # connected: half go slowloris
                key.data[1] = True
                selector.modify(sock, selectors.EVENT_READ, key.data)
                if which % 2:
                    try:
                        sock.send(SLOWLORIS_START)
                    except OSError:
                        pass
                continue
            try:
                gone = not sock.recv(4096)
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            if gone:  # closed by the server: come back later
                selector.unregister(sock)
                sock.close()
                opened -= 1
                closed += 1
                heapq.heappush(due, (now + reconnect_delay, which))
        if now >= next_drip:
            next_drip = now + 3
            for key in list(selector.get_map().values()):
                if key.data[0] % 2 and key.data[1]:
                    try:
                        key.fileobj.send(SLOWLORIS_DRIP)
                    except OSError:
                        pass
        counters[3 * slot : 3 * slot + 3] = [opened, closed, failed]


# --- the well-behaved devices -----------------------------------------------------------


class Device:
    def __init__(self, name: str, secret: str) -> None:
        self.name, self.secret, self.etag = name, secret, ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def poll(self, port: int) -> bool:
        """One GET of the configuration, reconnecting (once) if the server closed the
        connection; True if it took a new connection."""
        fresh = False
        for attempt in (1, 2):
            try:
                if self.writer is None:
                    fresh = True
                    self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
                self.writer.write(
                    f"GET /v1/devices/{self.name}/configuration HTTP/1.1\r\nHost: devapi\r\n"
                    f"Authorization: Bearer {self.secret}\r\nIf-None-Match: {self.etag}\r\n\r\n".encode()
                )
                await self._answer()
                return fresh
            except (OSError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _answer(self) -> None:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
        length = int(headers.get(b"content-length", b"0"))
        await self.reader.readexactly(length)
        if status not in (200, 304):
            raise OSError(f"{self.name}: HTTP {status}")
        self.etag = headers.get(b"etag", b"").decode()
        if headers.get(b"connection") == b"close":
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Polls:
    """Every device polls every ``interval`` (spread over it) until stopped; each poll is
    recorded as (start, latency, took a new connection), each failure by its start."""

    def __init__(self, devices: list[Device], port: int, interval: float) -> None:
        self.devices, self.port, self.interval = devices, port, interval
        self.samples: list[tuple[float, float, bool]] = []
        self.failures: list[float] = []
        self.stopped = False

    async def run(self) -> None:
        await asyncio.gather(
            *(self._device(d, i * self.interval / len(self.devices)) for i, d in enumerate(self.devices))
        )
        for device in self.devices:
            device.close()

    async def _device(self, device: Device, offset: float) -> None:
        await asyncio.sleep(offset)
        while not self.stopped:
            started = time.monotonic()
            try:
                fresh = await device.poll(self.port)
                self.samples.append((started, time.monotonic() - started, fresh))
            except (OSError, asyncio.IncompleteReadError):
                self.failures.append(started)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def window(self, begin: float, end: float) -> dict[str, float]:
        """Requests/s, p50/p99 latencies (all, and of those that needed a new connection)
        of the polls started in [begin, end)."""
        inside = [(latency, fresh) for started, latency, fresh in self.samples if begin <= started < end]
        every = sorted(latency for latency, _ in inside)
        connecting = sorted(latency for latency, fresh in inside if fresh)
        return {
            "rate": len(every) / (end - begin),
            "p50": _percentile(every, 0.5),
            "p99": _percentile(every, 0.99),
            "errors": sum(begin <= t < end for t in self.failures),
            "connects": len(connecting),
            "connect_p50": _percentile(connecting, 0.5),
            "connect_p99": _percentile(connecting, 0.99),
        }


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


def memory(pid: int) -> tuple[int, int]:
    """(current, peak) RSS of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- the run -----------------------------------------------------------------------------


def prepare(work: Path, port: int, count: int) -> tuple[Path, dict[str, str]]:
    """A database with ``count`` HTTP devices: (path, device secrets)."""
    db, names = work / "idle.db", [f"cam-{i:05d}" for i in range(count)]
    import_fleet(work, db, "devapi", f"{{type: http, url: 'http://127.0.0.1:{port}'}}", "cam", names)
    from campaignctl import db as database
    from campaignctl.credentials import secrets_of

    engine = database.create_engine(str(db))
    try:
        return db, secrets_of(engine, names)
    finally:
        engine.dispose()


def start_serve(db: Path, port: int, log: Path) -> subprocess.Popen:
    """The real command; its open-file limit is the machine's (it raises its soft limit to
    the hard one, which this process leaves as it is)."""
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "campaignctl",
                "--db",
                str(db),
                "serve",
                "--port",
                str(port),
                "--no-mqtt",
                "--no-engine",
            ],
            stderr=stderr,
        )
    import socket

    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"serve did not start: {log.read_text()}")


def report(label: str, stats: dict[str, float], pid: int, cpu: float) -> None:
    """One phase: the devices' figures, and serve's memory, descriptors and CPU share."""
    rss = memory(pid)[0]
    print(
        f"  {label:<26} {stats['rate']:>5.0f} req/s  p50 {stats['p50'] * 1000:>7.1f} ms  "
        f"p99 {stats['p99'] * 1000:>7.1f} ms  errors {stats['errors']:>4}  serve: RSS {rss:>4} MiB, "
        f"{open_files(pid):>5} open files, CPU {cpu:.0%} of a core\n"
        f"  {'':<26} of which {stats['connects']:.0f} on a new connection: "
        f"p50 {stats['connect_p50'] * 1000:.1f} ms  p99 {stats['connect_p99'] * 1000:.1f} ms"
    )


async def phases(args: argparse.Namespace, devices: list[Device], port: int, pid: int) -> list:
    """The devices poll all along: first alone, then with the bad sockets; returns the bad
    sockets' processes."""
    polls = Polls(devices, port, args.poll_interval)
    polling = asyncio.create_task(polls.run())
    await asyncio.sleep(args.poll_interval)  # once every device has polled once
    begin, cpu = time.monotonic(), cpu_seconds(pid)
    await asyncio.sleep(args.duration)
    report("devices alone", polls.window(begin, time.monotonic()), pid, (cpu_seconds(pid) - cpu) / args.duration)
    # A process may not hold more than the hard limit of descriptors (raising it needs
    # privileges containers often lack): as many processes as it takes.
    # They inherit this process's descriptors (the devices' sockets) too.
    per_process = resource.getrlimit(resource.RLIMIT_NOFILE)[1] - open_files(os.getpid()) - 100
    shares = [min(per_process, args.bad - start) for start in range(0, args.bad, per_process)]
    counters = multiprocessing.Array("l", 3 * len(shares), lock=False)

    def total(field: int) -> int:
        return sum(counters[field::3])

    bad = [
        multiprocessing.Process(
            target=bad_sockets, args=(port, share, args.reconnect_delay, counters, slot), daemon=True
        )
        for slot, share in enumerate(shares)
    ]
    started = time.monotonic()
    for process in bad:
        process.start()
    while total(0) + total(1) < args.bad:
        if time.monotonic() - started > 120 or not all(p.is_alive() for p in bad):
            raise SystemExit("the bad sockets did not all connect")
        await asyncio.sleep(0.2)
    print(f"  {args.bad} bad sockets connected in {time.monotonic() - started:.1f}s ({len(bad)} processes)")
    begin, closed, cpu = time.monotonic(), total(1), cpu_seconds(pid)
    await asyncio.sleep(args.duration)
    report(
        f"with {args.bad} bad sockets",
        polls.window(begin, time.monotonic()),
        pid,
        (cpu_seconds(pid) - cpu) / args.duration,
    )
    print(
        f"  bad sockets: {total(0)} open at the end, {total(1) - closed} closed by serve during the phase, "
        f"{total(2)} connection attempts failed"
    )
    polls.stopped = True
    await polling
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bad", type=int, default=20000, help="misbehaving sockets")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each phase")
    parser.add_argument(
        "--reconnect-delay", type=float, default=1.0, help="time a bad socket waits before coming back once closed"
    )
    args = parser.parse_args()
    raise_own_file_limit(args.devices + 200)
    work = Path(tempfile.mkdtemp(prefix="campaignctl-bench-"))
    port = free_port()
    proc, bad = None, []
    try:
        db, secrets = prepare(work, port, args.devices)
        proc = start_serve(db, port, work / "serve.log")
        devices = [Device(name, secret) for name, secret in sorted(secrets.items())]
        print(
            f"campaignctl serve on 127.0.0.1:{port}: {args.devices} devices polling every {args.poll_interval:g}s "
            f"({args.devices / args.poll_interval:.0f} req/s offered), {args.duration:g}s per phase; "
            f"serve's open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}"
        )
        bad.extend(asyncio.run(phases(args, devices, port, proc.pid)))
    finally:
        for process in bad:
            process.kill()
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
            log = (work / "serve.log").read_text()
            print(f"  serve's stderr: {len(log.encode())} bytes, {log.count('Traceback')} tracebacks")
            print("".join(f"    | {line}\n" for line in log.splitlines()[:12]), end="")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
