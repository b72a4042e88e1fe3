#!/usr/bin/env python3
"""Issue #5 figures: `read --all` wall time against the wire-time bound, and bus bytes against daly-bms-cli.

Runs the simulator at 9600 baud with 20 ms latency (`simulate --baud 9600 --latency-ms 20`), reads it with
`bms_exporter read --all`, and takes what crossed the line from the simulator's own count (its `stopped:` /
`gone:` line), so the bound does not depend on our logs. Bound = (bytes in + bytes out) x 10 / baud + latency
x requests. Usage: scripts/measure-bus.py [--runs N] [--bin PATH] [--daly-bms-cli PATH]
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time

BAUD = 9600
LATENCY_S = 0.020
STATS = re.compile(r"requests=(\d+) replies=(\d+) bytes_in=(\d+) bytes_out=(\d+)")


class Sim:
    """A simulator on a PTY (or TCP on a free port); `stop()` returns its line statistics."""

    def __init__(self, binary, protocol, extra, tcp=False):
        self.dir = tempfile.mkdtemp(prefix="bms-measure-")
        self.link = os.path.join(self.dir, "tty")
        where = ["--tcp", "127.0.0.1:0"] if tcp else ["--pty", self.link]
        self.proc = subprocess.Popen(
            [binary, "simulate", "--protocol", protocol, *where, "--baud", str(BAUD),
             "--latency-ms", str(int(LATENCY_S * 1000)), "--time-scale", "0", *extra],
            stderr=subprocess.PIPE, text=True)
        self.addr = None
        if tcp:
            line = self.proc.stderr.readline()
            self.addr = line.strip().rsplit(" ", 1)[-1]
        else:
            deadline = time.monotonic() + 10
            while not os.path.exists(self.link):
                if time.monotonic() > deadline:
                    raise SystemExit("the simulator's PTY never appeared")
                time.sleep(0.02)

    def connection(self):
        return ["--tcp", self.addr] if self.addr else ["--serial", self.link]

    def stop(self):
        if self.addr:
            # Let the simulator see the client go and count its last reply before it is told to stop.
            time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        err = self.proc.communicate(timeout=10)[1]
        found = STATS.findall(err)
        if not found:
            raise SystemExit(f"no line statistics from the simulator:\n{err}")
        requests, replies, bytes_in, bytes_out = map(int, found[-1])
        return {"requests": requests, "bytes_in": bytes_in, "bytes_out": bytes_out}


def bound_s(stats):
    return (stats["bytes_in"] + stats["bytes_out"]) * 10 / BAUD + LATENCY_S * stats["requests"]


def timed_read(binary, protocol, extra_sim, read_args, tcp, runs):
    rows = []
    for _ in range(runs):
        sim = Sim(binary, protocol, extra_sim, tcp)
        start = time.monotonic()
        out = subprocess.run([binary, "read", "--protocol", protocol, *sim.connection(), *read_args],
                             capture_output=True, text=True)
        wall = time.monotonic() - start
        stats = sim.stop()
        if out.returncode != 0:
            raise SystemExit(f"read failed: {out.stderr}")
        rows.append((wall, bound_s(stats), stats))
    wall = statistics.median(r[0] for r in rows)
    bound = statistics.median(r[1] for r in rows)
    return wall, bound, rows[0][2]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bin", default="target/release/bms_exporter")
    parser.add_argument("--daly-bms-cli", default=os.environ.get("BMS_DALY_BMS_CLI", "target/py/bin/daly-bms-cli"))
    args = parser.parse_args()

    print(f"# simulate --baud {BAUD} --latency-ms {int(LATENCY_S * 1000)}; median of {args.runs} runs\n")
    print("| read | requests | bytes | wire-time bound | wall time | ratio | bound + configured gaps | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    cases = [
        ("daly 16 cells, --all, gap 0", "daly", ["--cells", "16", "--temperatures", "4"], ["--all", "--request-gap-ms", "0"], False),
        ("daly 16 cells, --all, default gap 50 ms", "daly", ["--cells", "16", "--temperatures", "4"], ["--all"], False),
        ("pace 2 packs (TCP), --all, gap 0", "pace", ["--packs", "2", "--cells", "16"], ["--all", "--request-gap-ms", "0"], True),
        ("pace 2 packs (TCP), --all, default gap 50 ms", "pace", ["--packs", "2", "--cells", "16"], ["--all"], True),
    ]
    for name, protocol, sim_args, read_args, tcp in cases:
        wall, bound, stats = timed_read(args.bin, protocol, sim_args, read_args, tcp, args.runs)
        total = stats["bytes_in"] + stats["bytes_out"]
        # The request gap is quiet time asked for on purpose (the config's request_gap, default 50 ms).
        gap_s = 0.0 if "--request-gap-ms" in read_args else 0.050
        gapped = bound + gap_s * (stats["requests"] - 1)
        print(f"| {name} | {stats['requests']} | {total} | {bound * 1000:.0f} ms | {wall * 1000:.0f} ms "
              f"| {wall / bound:.2f} | {gapped * 1000:.0f} ms | {wall / gapped:.2f} |")

    print("\n| client, same 16-cell Daly simulator | requests | bytes on the bus | vs daly-bms-cli |")
    print("|---|---|---|---|")
    sim = Sim(args.bin, "daly", ["--cells", "16", "--temperatures", "4"])
    out = subprocess.run([args.daly_bms_cli, "-d", sim.link, "--all"], capture_output=True, text=True)
    theirs = sim.stop()
    if out.returncode != 0:
        raise SystemExit(f"daly-bms-cli failed: {out.stderr}")
    base = theirs["bytes_in"] + theirs["bytes_out"]
    print(f"| daly-bms-cli --all | {theirs['requests']} | {base} | — |")
    def ours(read_args):
        sim = Sim(args.bin, "daly", ["--cells", "16", "--temperatures", "4"])
        out = subprocess.run([args.bin, "read", "--protocol", "daly", "--serial", sim.link, *read_args],
                             capture_output=True, text=True)
        stats = sim.stop()
        if out.returncode != 0:
            raise SystemExit(f"read failed: {out.stderr}")
        return stats["requests"], stats["bytes_in"] + stats["bytes_out"]

    def row(name, requests, total):
        print(f"| {name} | {requests:g} | {total:g} | {100 * (total - base) / base:+.0f} % |")

    cli_sections = ["soc", "mosfet", "status", "cells", "temperatures", "balancing", "alarms"]
    row("bms_exporter read --all (one poll: also identity and capacity)", *ours(["--all"]))
    first = ours(cli_sections)
    row("bms_exporter read, daly-bms-cli's sections (one poll)", *first)
    # Later polls of a long-running reader (the exporter's case): counts cached, 0x94 refreshed every 10th poll.
    polls = 11  # a whole 0x94 refresh cycle after the first poll
    many = ours([*cli_sections, "--watch", "0", "--count", str(polls)])
    row(f"bms_exporter, the same sections, mean of polls 2-{polls} (`read --watch 0 --count {polls}`)",
        (many[0] - first[0]) / (polls - 1), (many[1] - first[1]) / (polls - 1))


if __name__ == "__main__":
    main()
