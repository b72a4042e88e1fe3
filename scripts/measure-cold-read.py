#!/usr/bin/env python3
"""Measure cold reads of a Daly board with and without its identity reads answered.

Starts the built-in simulator on a PTY at 9600 baud with a 20 ms turnaround (`simulate --no-identity` leaves 0x57
and 0x63 unanswered, as many real boards do), then times `bms_exporter read --all` and `detect` with default
settings, and the Python `daly-bms-cli --all` beside them. Prints a table and checks the goals: a `read` of the
board without identity reads takes at most 1.3 times the `read` of the same board with them, and `detect` finds
it within 3 s. Exits 1 when a goal is missed or a command fails.

Usage: scripts/measure-cold-read.py [--binary PATH] [--daly-bms-cli PATH] [--runs N]
Defaults: the release binary if built, else the debug one (under $CARGO_TARGET_DIR or ./target), and the
daly-bms-cli of the venv scripts/test.sh creates (target/py). Stdlib only.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BAUD = "9600"
TURNAROUND_MS = "20"
READ_RATIO_GOAL = 1.3
DETECT_GOAL_S = 3.0


def default_binary():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("release", "debug"):
        candidate = target / profile / "bms_exporter"
        if candidate.exists():
            return candidate
    sys.exit(f"no bms_exporter under {target}: run `cargo build` (or --release) first, or pass --binary")


def start_simulator(binary, directory, identity):
    link = Path(directory) / "tty"
    args = [str(binary), "simulate", "--protocol", "daly", "--pty", str(link), "--baud", BAUD,
            "--latency-ms", TURNAROUND_MS, "--time-scale", "0"]
    if not identity:
        args.append("--no-identity")
    sim = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not link.exists():
        if time.monotonic() > deadline or sim.poll() is not None:
            sim.kill()
            sys.exit("the simulator's PTY link never appeared")
        time.sleep(0.02)
    return sim, link


def timed(args, what):
    """Run args; return its wall time in seconds. A failing command stops the measurement."""
    started = time.monotonic()
    done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"{what} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def measure(binary, cli, runs, identity):
    with tempfile.TemporaryDirectory(prefix="measure-cold-read-") as directory:
        sim, link = start_simulator(binary, directory, identity)
        try:
            read = [str(binary), "read", "--protocol", "daly", "--serial", str(link), "--all"]
            detect = [str(binary), "detect", "--serial", str(link)]
            reads = [timed(read, "read") for _ in range(runs)]
            detects = [timed(detect, "detect") for _ in range(runs)]
            python = [timed([str(cli), "-d", str(link), "--all"], "daly-bms-cli") for _ in range(runs)] if cli else []
        finally:
            sim.kill()
            sim.wait()
    return statistics.median(reads), statistics.median(detects), statistics.median(python) if python else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", type=Path, default=None, help="the bms_exporter binary to measure")
    parser.add_argument("--daly-bms-cli", type=Path, default=ROOT / "target" / "py" / "bin" / "daly-bms-cli",
                        help="the Python daly-bms-cli to time beside it")
    parser.add_argument("--no-python", action="store_true", help="do not time daly-bms-cli")
    parser.add_argument("--runs", type=int, default=3, help="runs of each command; the median is shown")
    args = parser.parse_args()
    binary = args.binary or default_binary()
    cli = None
    if not args.no_python:
        if not args.daly_bms_cli.exists():
            sys.exit(f"{args.daly_bms_cli} is missing: run scripts/test.sh once (it creates the venv), "
                     "pass --daly-bms-cli PATH, or --no-python")
        cli = args.daly_bms_cli

    print(f"binary: {binary}; simulator: daly, PTY, {BAUD} baud, {TURNAROUND_MS} ms turnaround; "
          f"median of {args.runs} runs")
    results = {identity: measure(binary, cli, args.runs, identity) for identity in (True, False)}
    print()
    print(f"{'identity reads (0x57, 0x63)':<30} {'read --all':>11} {'detect':>9} {'daly-bms-cli --all':>19}")
    for identity, (read, detect, python) in results.items():
        label = "answered" if identity else "ignored (--no-identity)"
        python_text = f"{python:.2f} s" if python is not None else "not run"
        print(f"{label:<30} {read:>9.2f} s {detect:>7.2f} s {python_text:>19}")
    read_answered, _, _ = results[True]
    read_ignored, _, _ = results[False]
    ratio = read_ignored / read_answered
    print()
    failed = False
    verdict = "ok" if ratio <= READ_RATIO_GOAL else "MISSED"
    failed |= ratio > READ_RATIO_GOAL
    print(f"read, identity ignored / answered: {ratio:.2f} (goal <= {READ_RATIO_GOAL}): {verdict}")
    for identity, (_, detect, _) in results.items():
        verdict = "ok" if detect <= DETECT_GOAL_S else "MISSED"
        failed |= detect > DETECT_GOAL_S
        label = "answered" if identity else "ignored"
        print(f"detect, identity {label}: {detect:.2f} s (goal <= {DETECT_GOAL_S:.0f} s): {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
