#!/usr/bin/env python3
"""Issue #6 figures: scrapes per second with wrk against `--demo`, and peak RSS of `--demo` and of a config with
8 devices, from /usr/bin/time -v (the exporter's own maximum resident set size).

Usage: scripts/measure-exporter.py [--bin target/release/bms_exporter] [--seconds 30]
Needs the Debian packages wrk and time. The /metrics render time is a criterion bench:
`cargo bench --bench scrape`.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


# The Accept header Prometheus sends, so the figures are those of the OpenMetrics body Prometheus scrapes (a
# client without it gets the text format, the same body rewritten: slightly more work per scrape).
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def scrape(addr):
    request = urllib.request.Request(f"http://{addr}/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    with urllib.request.urlopen(request) as response:
        return response.read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(addr, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{addr}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the exporter at {addr} never became ready")


class Timed:
    """The exporter under /usr/bin/time -v; `stop()` returns its peak RSS in KiB."""

    started = []

    def __init__(self, binary, args):
        self.log = tempfile.NamedTemporaryFile(prefix="bms-time-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(["/usr/bin/time", "-v", binary, *args], stderr=self.log,
                                     stdout=subprocess.DEVNULL)
        Timed.started.append(self.proc)

    def stop(self):
        # time(1) forwards nothing: signal the exporter itself (time's only child).
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in children:
            os.kill(int(pid), signal.SIGTERM)
        self.proc.wait(timeout=20)
        text = open(self.log.name).read()
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        if not found:
            raise SystemExit(f"no RSS in the time(1) output:\n{text}")
        return int(found.group(1))


def wrk(addr, seconds):
    out = subprocess.run(["wrk", "-t", "2", "-c", "16", "-d", f"{seconds}s", "-H", f"Accept: {PROMETHEUS_ACCEPT}",
                          f"http://{addr}/metrics"],
                         capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = re.search(r"Latency\s+(\S+)", out).group(1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, latency, int(errors.group(1)) if errors else 0


def main():
    for tool in ("wrk", "/usr/bin/time"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: install the Debian packages wrk and time")
    try:
        run()
    finally:
        # Leave no simulator or exporter behind, whatever failed. time(1) does not pass a kill on, so its child,
        # the exporter, is killed first; killing only time would leave the exporter running.
        for p in Timed.started + SIMULATORS:
            if p.poll() is None:
                children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
                for pid in children:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                p.kill()
                p.wait()


SIMULATORS = []


def run():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bin", default="target/release/bms_exporter")
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()

    # --demo: RSS at rest (a minute of scrapes at Prometheus' pace would be the same) and under wrk.
    addr = f"127.0.0.1:{free_port()}"
    demo = Timed(args.bin, ["--demo", "--web.listen-address", addr, "--log.level", "warn"])
    wait_ready(addr)
    body = scrape(addr)
    rate, latency, errors = wrk(addr, args.seconds)
    demo_rss = demo.stop()
    print(f"--demo: wrk -t2 -c16 -d{args.seconds}s /metrics: {rate:,.0f} scrapes/s, mean latency {latency}, "
          f"{errors} non-2xx; body {len(body):,} bytes; peak RSS {demo_rss / 1024:.1f} MiB (including the load)")

    # 8 devices from a config: 8 simulator processes on TCP, scraped once a second for 10 s.
    sims, devices = SIMULATORS, []
    for i in range(8):
        protocol = ["daly", "pace", "sinowealth", "daly-modbus"][i % 4]
        cells = ["--cells", "4"] if protocol == "sinowealth" else ["--cells", "16"]
        p = subprocess.Popen([args.bin, "simulate", "--protocol", protocol, "--tcp", "127.0.0.1:0", *cells],
                             stderr=subprocess.PIPE, text=True)
        sims.append(p)
        line = p.stderr.readline()
        if "listening on" not in line:
            raise SystemExit(f"the {protocol} simulator did not start: {line}")
        devices.append(f"  - name: dev{i}\n    protocol: {protocol}\n    tcp: {line.strip().rsplit(' ', 1)[-1]}\n")
    config = tempfile.NamedTemporaryFile("w", prefix="bms-8-", suffix=".yaml", delete=False)
    config.write("devices:\n" + "".join(devices))
    config.close()
    addr = f"127.0.0.1:{free_port()}"
    eight = Timed(args.bin, ["--config", config.name, "--web.listen-address", addr, "--log.level", "warn"])
    wait_ready(addr)
    for _ in range(10):
        scrape(addr)
        time.sleep(1)
    eight_rss = eight.stop()
    for p in sims:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=10)
    print(f"8 devices (2 each of daly, pace, sinowealth, daly-modbus on TCP), 10 scrapes: peak RSS "
          f"{eight_rss / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
