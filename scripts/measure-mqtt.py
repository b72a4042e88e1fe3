#!/usr/bin/env python3
"""MQTT load and memory figures: messages and bytes per publish interval by layout, and the exporter's RSS.

For a 16-cell Daly board and a 4-pack x 16-cell Pace rack (simulators, frozen), each in the native and the bmspace
layout, it runs mosquitto on a free loopback port, the exporter publishing every INTERVAL, and mosquitto_sub
recording every message; after a warm-up it counts the state messages (and their topic + payload bytes) over
--intervals intervals, and the one-off discovery configs. Then it runs 8 devices (4 Daly + 4 Pace racks of 2
packs) with MQTT on and reads the exporter's peak and current RSS from /proc.

Usage: python3 scripts/measure-mqtt.py [--binary target/release/bms_exporter] [--intervals 10] [--interval 1]
Needs mosquitto and mosquitto-clients (Debian packages); stdlib Python only.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def program(name):
    found = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if not found:
        sys.exit(f"{name} is missing: install the Debian package mosquitto / mosquitto-clients")
    return found


def wait_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


class Run:
    """Processes started for one measurement, all killed at the end."""

    def __init__(self, binary):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="bms-measure-mqtt-")
        self.procs = []

    def start(self, args, **kw):
        proc = subprocess.Popen(args, stdout=kw.pop("stdout", subprocess.DEVNULL), stderr=subprocess.DEVNULL, **kw)
        self.procs.append(proc)
        return proc

    def broker(self):
        port = free_port()
        conf = os.path.join(self.dir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.start([program("mosquitto"), "-c", conf])
        wait_port(port)
        return port

    def simulator(self, protocol, extra):
        port = free_port()
        args = [self.binary, "simulate", "--protocol", protocol, "--tcp", f"127.0.0.1:{port}", "--baud", "0",
                "--latency-ms", "0", "--time-scale", "0"] + extra
        self.start(args)
        wait_port(port)
        return f"127.0.0.1:{port}"

    def exporter(self, devices, mqtt):
        conf = os.path.join(self.dir, "exporter.yaml")
        with open(conf, "w") as f:
            f.write("devices:\n")
            for name, protocol, addr in devices:
                f.write(f"  - name: {name}\n    protocol: {protocol}\n    tcp: {addr}\n")
            f.write("mqtt:\n" + "".join(f"  {line}\n" for line in mqtt))
        web = free_port()
        return self.start([self.binary, "serve", "--config", conf, "--web.listen-address", f"127.0.0.1:{web}"])

    def close(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def layout_load(binary, protocol, sim_args, layout, interval, intervals):
    run = Run(binary)
    try:
        port = run.broker()
        addr = run.simulator(protocol, sim_args)
        log = open(os.path.join(run.dir, "sub.log"), "w")
        # retain flag, payload length, topic: enough to count messages and bytes without storing payloads.
        run.start([program("mosquitto_sub"), "-p", str(port), "-t", "#", "-F", "%r %l %t"], stdout=log)
        time.sleep(0.3)
        run.exporter([("battery", protocol, addr)],
                     [f"broker: mqtt://127.0.0.1:{port}", f"interval: {interval}s", f"layout: {layout}", "qos: 0"])
        time.sleep(3 * interval + 2)  # first polls, first discovery
        lines_before = sum(1 for _ in open(log.name))
        time.sleep(intervals * interval)
        log.flush()
        lines = open(log.name).read().splitlines()
        window = lines[lines_before:]
        everything = lines
    finally:
        run.close()

    def split(rows):
        state = [(int(r.split(" ", 2)[1]), r.split(" ", 2)[2]) for r in rows if r.count(" ") >= 2]
        disc = [(n, t) for n, t in state if t.startswith("homeassistant/")]
        other = [(n, t) for n, t in state if not t.startswith("homeassistant/")]
        return disc, other

    disc_all, _ = split(everything)
    _, state = split(window)
    per = len(state) / intervals
    bytes_per = sum(n + len(t.encode()) for n, t in state) / intervals
    disc_unique = {t: n for n, t in disc_all}
    return per, bytes_per, len(disc_unique), sum(n + len(t.encode()) for t, n in disc_unique.items())


def rss_8_devices(binary, interval, seconds):
    run = Run(binary)
    try:
        port = run.broker()
        devices = []
        for i in range(4):
            devices.append((f"daly{i}", "daly", run.simulator("daly", ["--cells", "16"])))
            devices.append((f"pace{i}", "pace", run.simulator("pace", ["--packs", "2", "--cells", "16"])))
        exporter = run.exporter(devices, [f"broker: mqtt://127.0.0.1:{port}", f"interval: {interval}s"])
        time.sleep(seconds)
        status = open(f"/proc/{exporter.pid}/status").read()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return fields["VmHWM"].strip(), fields["VmRSS"].strip()
    finally:
        run.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="target/release/bms_exporter")
    parser.add_argument("--intervals", type=int, default=10)
    parser.add_argument("--interval", type=int, default=1, help="publish interval in seconds")
    parser.add_argument("--rss-seconds", type=int, default=30)
    args = parser.parse_args()
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"{args.binary} is not there: cargo build --release --locked")

    print("| device | layout | state messages / interval | state bytes / interval (topic + payload) "
          "| discovery configs | discovery bytes (once per connection) |")
    print("|---|---|---|---|---|---|")
    for name, protocol, sim in [("Daly 16 cells", "daly", ["--cells", "16"]),
                                ("Pace 4 packs x 16 cells", "pace", ["--packs", "4", "--cells", "16"])]:
        for layout in ["native", "bmspace"]:
            per, bytes_per, disc, disc_bytes = layout_load(args.binary, protocol, sim, layout, args.interval,
                                                           args.intervals)
            print(f"| {name} | {layout} | {per:.1f} | {bytes_per:,.0f} | {disc} | {disc_bytes:,} |", flush=True)
    peak, now = rss_8_devices(args.binary, args.interval, args.rss_seconds)
    print(f"\nRSS with MQTT on, 8 devices (4 Daly 16 cells + 4 Pace 2 x 16 cells), interval {args.interval}s, "
          f"after {args.rss_seconds}s: peak {peak}, now {now}")


if __name__ == "__main__":
    main()
