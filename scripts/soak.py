#!/usr/bin/env python3
"""Soak harness (issue 12, point 6): every protocol under every fault kind, read through `serve`, every scraped
value compared with the simulators' truth.

It owns the whole run: four `bms_exporter simulate` processes on 127.0.0.1 (daly 16 cells, daly-modbus 16 cells,
sinowealth 8 cells, pace 2 packs of 16 cells and 6 sensors), each with `--time-scale 0` (constant truth, exact
comparisons) and every fault kind at `--rate` (default 5 %); one `bms_exporter serve` with `max_age: 0s` (each
scrape polls every device) and `stale_after: 60s`; then /metrics scraped in a loop for `--duration` seconds or until
`--polls` polls. Every sample of every value family is compared field by field with the truth files, within half
the wire's resolution; a value series the truth says exists must be there in every scrape once the device has
been seen complete, while its data is fresh (last success younger than stale_after). At the end it prints scrapes,
polls, faults injected by kind (from the truth files), failures by reason (from /metrics), samples compared and
wrong, series missing while fresh, the serve process's RSS at start and end and its CPU seconds. Exit status 1 on
any wrong or missing sample, 2 when the run itself could not be done. Every child is killed on exit, Ctrl-C
included; only 127.0.0.1 is used, on ports picked at run time.

Run (Python 3 standard library only):
    cargo build --locked && python3 scripts/soak.py                      # 2 minutes, 5 % of each kind
    python3 scripts/soak.py --polls 10000 --probe --binary target/release/bms_exporter   # the long run
    python3 scripts/soak.py --faults gross,multibyte --rate 0.1 --duration 60 --verbose --keep
    python3 scripts/soak.py --devices sinowealth --faults garbage --rate 0.5 --seed 31 --polls 1000   # issue 12

Faults: drop, corrupt, multibyte, gross, truncate, delay:0.4 (past the 300 ms timeout), garbage, echo,
wrong_command, silent:0.5 (half a second of silence), close; the simulator rolls them in that order per request,
at most one striking, so later kinds strike a little less often than --rate (the counts are printed). Scrapes ask
for a 2 s deadline: a device still polling then is served from its last snapshot, as Prometheus would see it.
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

FAULT_KINDS = ["drop", "corrupt", "multibyte", "gross", "truncate", "delay:0.4", "garbage", "echo",
               "wrong_command", "silent:0.5", "close"]

# The devices: (device name, protocol, simulator arguments, extra config lines).
DEVICES = [
    ("daly", "daly", ["--cells", "16", "--temperatures", "4"], ""),
    ("modbus", "daly-modbus", ["--cells", "16", "--temperatures", "4"], ""),
    ("sinowealth", "sinowealth", ["--cells", "8", "--temperatures", "2"], ""),
    ("pace", "pace", ["--packs", "2", "--cells", "16", "--temperatures", "6"],
     "    pace: { address: 1, packs: all }\n"),
]

STALE_AFTER_S = 60.0
TIMEOUT_MS = 300
# The scrape deadline asked of the exporter: past it a device still polling is served from its last snapshot, so
# one slow device does not hold every scrape back (its poll goes on, and the next scrape joins it).
SCRAPE_TIMEOUT_S = 2
# Scrapes start at most this often: when every poll fails at once (a link in its reconnect backoff) the exporter
# answers in a few milliseconds, and a loop without a floor would only spin on a shared machine.
MIN_SCRAPE_INTERVAL_S = 0.02

# Which truth fields each protocol carries, so a field it does not carry is not expected (a Daly board reports no
# SOH, full capacity or MOSFET temperature; Sinowealth no balancing). Sensors: which named sensors besides probes.
CARRIES = {
    "daly": {"fields": {"design_capacity_ampere_hours"}, "balancing": True, "sensors": set()},
    "daly-modbus": {"fields": set(), "balancing": True, "sensors": {"mosfet"}},
    "sinowealth": {"fields": {"full_capacity_ampere_hours"}, "balancing": False, "sensors": {"board"}},
    "pace": {"fields": {"state_of_health_ratio", "full_capacity_ampere_hours", "design_capacity_ampere_hours"},
             "balancing": True, "sensors": {"mosfet", "ambient"}},
}

# Pack-level numbers every protocol carries, and those only some do (CARRIES), with their metric names.
NUMBERS = [
    ("voltage_volts", "bms_pack_voltage_volts"),
    ("current_amperes", "bms_pack_current_amperes"),
    ("state_of_charge_ratio", "bms_pack_state_of_charge_ratio"),
    ("state_of_health_ratio", "bms_pack_state_of_health_ratio"),
    ("remaining_capacity_ampere_hours", "bms_pack_remaining_capacity_ampere_hours"),
    ("full_capacity_ampere_hours", "bms_pack_full_capacity_ampere_hours"),
    ("design_capacity_ampere_hours", "bms_pack_design_capacity_ampere_hours"),
    ("cycle_count", "bms_pack_cycle_count"),
    ("cell_count", "bms_pack_cell_count"),
    ("temperature_sensor_count", "bms_pack_temperature_sensor_count"),
]
OPTIONAL_FIELDS = {"state_of_health_ratio", "full_capacity_ampere_hours", "design_capacity_ampere_hours"}

# The wire's step per protocol and field (half of it, plus float noise, is the tolerance). Counts are exact.
STEP = {
    "daly": {"voltage_volts": 0.1, "current_amperes": 0.1, "state_of_charge_ratio": 0.001,
             "remaining_capacity_ampere_hours": 0.001, "design_capacity_ampere_hours": 0.001, "cell": 0.001,
             "temperature": 1.0},
    "daly-modbus": {"voltage_volts": 0.1, "current_amperes": 0.1, "state_of_charge_ratio": 0.001,
                    "remaining_capacity_ampere_hours": 0.1, "cell": 0.001, "temperature": 1.0},
    "sinowealth": {"voltage_volts": 0.001, "current_amperes": 0.001, "state_of_charge_ratio": 0.01,
                   "remaining_capacity_ampere_hours": 0.001, "full_capacity_ampere_hours": 0.001, "cell": 0.001,
                   "temperature": 0.1},
    # SOC and SOH are remaining / full and full / design of 10 mAh values: far finer than 0.0002.
    "pace": {"voltage_volts": 0.001, "current_amperes": 0.01, "state_of_charge_ratio": 0.0002,
             "state_of_health_ratio": 0.0002, "remaining_capacity_ampere_hours": 0.01,
             "full_capacity_ampere_hours": 0.01, "design_capacity_ampere_hours": 0.01, "cell": 0.001,
             "temperature": 0.1},
}

# Truth fields with no metric to compare, and pack-scope families with no truth to compare them with: each is
# skipped on purpose, named here so nothing is ignored silently.
SKIPPED_TRUTH_FIELDS = {
    "online": "no metric: a pack that is not online has no pack series at all (all packs here are online)",
    "balancing_active": "no metric: only the per-cell bms_cell_balancing series are exported",
    "charger_connected": "the truth has none (null): the battery model has no charger detection",
    "load_connected": "the truth has none (null): the battery model has no load detection",
    "digital_io": "the truth has none (empty): the battery model has no digital ports",
    "info": "the truth has none (all null): identity strings are the simulators' constants, not battery state",
}
SKIPPED_FAMILIES = {
    "bms_charger_connected": "charger_connected",
    "bms_load_connected": "load_connected",
    "bms_digital_io": "digital_io",
    "bms_pack_info": "info",
    # Running totals the exporter integrates from the values it reads: the truth has no such field.
    "bms_pack_charged_energy_joules_total": "none: integrated by the exporter",
    "bms_pack_discharged_energy_joules_total": "none: integrated by the exporter",
    "bms_pack_charged_ampere_hours_total": "none: integrated by the exporter",
    "bms_pack_discharged_ampere_hours_total": "none: integrated by the exporter",
}
ALARM_FAMILIES = {"bms_alarm_active", "bms_cell_alarm_active", "bms_temperature_alarm_active"}

CHILDREN = []


class RunError(Exception):
    """The run itself could not be done (a process did not start, the exporter went away)."""


def log(*args):
    print(*args, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args, stderr_path):
    err = open(stderr_path, "w")
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    err.close()
    CHILDREN.append(proc)
    return proc


def stop_children():
    for proc in CHILDREN:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 5
    for proc in CHILDREN:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_simulator(binary, workdir, protocol, sim_args, faults, rate, seed, baud):
    truth = os.path.join(workdir, f"truth-{protocol}.json")
    err_path = os.path.join(workdir, f"simulator-{protocol}.log")
    fault_args = [a for kind in faults for a in ("--fault", f"{kind}={rate}")]
    args = [binary, "simulate", "--protocol", protocol, "--tcp", "127.0.0.1:0", "--time-scale", "0",
            "--baud", str(baud), "--latency-ms", "2", "--seed", str(seed), "--truth", truth, *sim_args, *fault_args]
    proc = spawn(args, err_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = open(err_path).read()
        found = re.search(r"simulator: listening on (127\.0\.0\.1:\d+)", text)
        if found:
            return found.group(1), truth
        if proc.poll() is not None:
            raise RunError(f"the {protocol} simulator exited ({proc.returncode}):\n{text}")
        time.sleep(0.05)
    raise RunError(f"the {protocol} simulator did not start listening within 20 s")


# The Accept header Prometheus sends: the exporter answers it with OpenMetrics (ending in `# EOF`, which
# parse_metrics checks), where a client without it gets the Prometheus text format.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def http_get(url, timeout=30):
    """GET `url` as Prometheus scrapes it (its Accept and scrape-timeout headers); the body as text."""
    request = urllib.request.Request(url, headers={"X-Prometheus-Scrape-Timeout-Seconds": str(SCRAPE_TIMEOUT_S),
                                                   "Accept": PROMETHEUS_ACCEPT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read().decode()


def start_exporter(binary, workdir, config):
    for _ in range(3):
        addr = f"127.0.0.1:{free_port()}"
        err_path = os.path.join(workdir, "serve.log")
        proc = spawn([binary, "serve", "--config", config, "--web.listen-address", addr, "--log.level", "warn"],
                     err_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                http_get(f"http://{addr}/-/ready", timeout=2)
                return proc, addr
            except (OSError, urllib.error.URLError):
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        text = open(err_path).read()
        if proc.poll() is None:
            raise RunError(f"the exporter at {addr} was not ready after 30 s:\n{text}")
        if "in use" not in text:
            raise RunError(f"the exporter exited ({proc.returncode}):\n{text}")
    raise RunError("the exporter found its port taken three times")


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(body):
    """{(name, ((label, value), …)): value} of an OpenMetrics body; raises RunError on a cut or bad body."""
    if not body.rstrip().endswith("# EOF"):
        raise RunError("a /metrics body without its closing '# EOF'")
    samples = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        found = SAMPLE.match(line)
        if not found:
            raise RunError(f"an unparsable /metrics line: {line!r}")
        name, labels, value = found.groups()
        pairs = tuple(sorted((k, re.sub(r"\\(.)", r"\1", v)) for k, v in LABEL.findall(labels or "")))
        samples[(name, pairs)] = float(value)
    return samples


def proc_stats(pid):
    """(RSS in KiB, CPU seconds user + system) of a process, from /proc."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the parenthesised command: state is field 3, utime 14 and stime 15 (1-based).
        rest = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(rest[11]) + int(rest[12])) / ticks


def key(name, **labels):
    return (name, tuple(sorted(labels.items())))


def expected_series(device, protocol, truth):
    """{series key: (truth value, tolerance, description)} that the truth says `device` must export, per pack."""
    carries = CARRIES[protocol]
    steps = STEP[protocol]
    out = {}
    for pack in truth["packs"]:
        p = f"{pack['pack']:02d}"
        for field, metric in NUMBERS:
            if field in OPTIONAL_FIELDS and field not in carries["fields"]:
                continue
            value = pack.get(field)
            if value is None:
                continue
            tolerance = steps.get(field, 0.0) / 2 + 1e-6
            out[key(metric, device=device, pack=p)] = (float(value), tolerance, field)
        state = pack.get("state")
        if state is not None:
            for s in ("idle", "charging", "discharging"):
                out[key("bms_pack_state", device=device, pack=p, state=s)] = (float(s == state), 0.0, "state")
        for mosfet in ("charge", "discharge"):
            on = pack.get(f"{mosfet}_mosfet_enabled")
            if on is not None:
                out[key("bms_mosfet_enabled", device=device, pack=p, mosfet=mosfet)] = (float(on), 0.0, "mosfet")
        for i, volts in enumerate(pack["cell_volts"], 1):
            if volts is not None:
                out[key("bms_cell_voltage_volts", device=device, pack=p, cell=f"{i:02d}")] = (
                    volts, steps["cell"] / 2 + 1e-6, "cell_volts")
        if carries["balancing"]:
            for i, on in enumerate(pack["cell_balancing"], 1):
                out[key("bms_cell_balancing", device=device, pack=p, cell=f"{i:02d}")] = (
                    float(on), 0.0, "cell_balancing")
        for t in pack["temperatures"]:
            sensor = t["sensor"]
            if isinstance(sensor, dict):
                label = f"{sensor['probe']:02d}"
            elif sensor in carries["sensors"]:
                label = sensor
            else:
                continue
            out[key("bms_temperature_celsius", device=device, pack=p, sensor=label)] = (
                t["celsius"], steps["temperature"] / 2 + 1e-6, "temperatures")
    return out


def alarm_truth(truth):
    """{(family, pack label, index label or None, alarm): active} the truth lists. An alarm the truth does not list
    counts as inactive: only the Daly truth lists its whole table, and the frozen batteries are far from every
    threshold, so no simulator raises one."""
    out = {}
    for pack in truth["packs"]:
        p = f"{pack['pack']:02d}"
        for a in pack.get("alarms", []):
            out[("bms_alarm_active", p, None, a["name"])] = bool(a["active"])
        for family, field in (("bms_cell_alarm_active", "cell_alarms"),
                              ("bms_temperature_alarm_active", "temperature_alarms")):
            for a in pack.get(field, []):
                kind = a["kind"] if isinstance(a["kind"], str) else "unknown"
                out[(family, p, f"{a['index']:02d}", kind)] = True
    return out


def alarm_key(name, labels):
    d = dict(labels)
    return (name, d.get("pack"), d.get("cell", d.get("sensor")), d.get("alarm"))


def out_of_physical_range(metric, value, cells=16):
    """Whether a wrong value is one no battery could report (what a gross fault produces): a cell outside 0–5 V, a
    pack above 5 V per cell, a temperature outside −50…150 °C, SOC outside 0–1, a current beyond 1000 A, a
    remaining capacity above twice the simulated packs' 280 Ah."""
    limits = {"bms_cell_voltage_volts": (0, 5), "bms_temperature_celsius": (-50, 150),
              "bms_pack_state_of_charge_ratio": (0, 1), "bms_pack_current_amperes": (-1000, 1000),
              "bms_pack_voltage_volts": (0, 5 * cells), "bms_pack_remaining_capacity_ampere_hours": (0, 560)}
    lo, hi = limits.get(metric, (-math.inf, math.inf))
    return not lo <= value <= hi


class Soak:
    def __init__(self, args, devices, addr):
        self.args = args
        self.devices = devices  # name -> {"protocol", "truth_path", "expected", "alarms"}
        self.addr = addr
        self.scrapes = 0
        self.compared = 0
        self.wrong = []  # (scrape, device, metric, labels, got, want, field)
        self.missing = 0
        self.missing_by = {}  # (device, metric) -> count
        self.missing_scrapes = {}  # device -> scrapes with something missing
        self.unchecked = {}  # family -> samples skipped on purpose
        self.complete_at = {}  # device -> scrape number
        self.learned_alarms = {}  # device -> set of alarm series keys seen when first complete
        self.down_scrapes = {d: 0 for d in devices}
        self.last = {}
        # --probe: one thread per device; the checks and counters are shared under this lock.
        self.lock = threading.Lock()
        self.latest = {}  # device -> the samples of its last /probe

    def scrape(self):
        body = http_get(f"http://{self.addr}/metrics")
        self.scrapes += 1
        samples = parse_metrics(body)
        self.last = samples
        now = time.time()
        for device, d in self.devices.items():
            self.check_device(device, d, samples, now)
        return samples

    def probe(self, device):
        """One `/probe?target=DEVICE` scrape (--probe mode): polls only that device, checked like a /metrics one."""
        body = http_get(f"http://{self.addr}/probe?target={device}")
        samples = parse_metrics(body)
        now = time.time()
        with self.lock:
            self.scrapes += 1
            self.latest[device] = samples
            self.last = {k: v for s in self.latest.values() for k, v in s.items()}
            self.check_device(device, self.devices[device], samples, now)

    def check_device(self, device, d, samples, now):
        n = self.scrapes
        if samples.get(key("bms_up", device=device)) != 1.0:
            self.down_scrapes[device] += 1
        mine = {k: v for k, v in samples.items() if dict(k[1]).get("device") == device and "pack" in dict(k[1])}
        # Values: every exported pack-scope sample is compared with the truth, or skipped on purpose.
        for k, got in mine.items():
            name, labels = k
            if name in SKIPPED_FAMILIES:
                self.unchecked[name] = self.unchecked.get(name, 0) + 1
                continue
            if name in ALARM_FAMILIES:
                want = float(d["alarms"].get(alarm_key(name, labels), False))
                self.compare(n, device, name, labels, got, want, 0.0, "alarms")
                continue
            expected = d["expected"].get(k)
            if expected is None:
                self.compare(n, device, name, labels, got, None, 0.0, "no such series in the truth")
                continue
            want, tolerance, field = expected
            self.compare(n, device, name, labels, got, want, tolerance, field)
        # Presence: once complete, every expected series is there while the data is fresh.
        # The truth's own alarm list (Daly's whole table) is expected too: every alarm is always present.
        needed = set(d["expected"]) | {key(name, device=device, pack=p, alarm=alarm)
                                       for (name, p, index, alarm) in d["alarms"] if index is None}
        if device not in self.complete_at:
            if needed <= set(mine):
                self.complete_at[device] = n
                self.learned_alarms[device] = {k for k in mine if k[0] in ALARM_FAMILIES}
            return
        last_success = samples.get(key("bms_last_poll_success_timestamp_seconds", device=device), 0.0)
        if now - last_success >= STALE_AFTER_S - 1:
            return
        absent = sorted((needed | self.learned_alarms[device]) - set(mine))
        if absent:
            self.missing += len(absent)
            self.missing_scrapes[device] = self.missing_scrapes.get(device, 0) + 1
            for name, _ in absent:
                self.missing_by[(device, name)] = self.missing_by.get((device, name), 0) + 1
            up = samples.get(key("bms_up", device=device))
            if self.args.verbose:
                for name, labels in absent:
                    log(f"MISSING scrape {n}: {device} {name}{{{fmt_labels(labels)}}} (bms_up {up:g})")
            else:
                log(f"MISSING scrape {n}: {device}: {len(absent)} of {len(needed | self.learned_alarms[device])}"
                    f" series absent while fresh (bms_up {up:g}; last success {now - last_success:.1f} s ago)")

    def compare(self, n, device, name, labels, got, want, tolerance, field):
        self.compared += 1
        ok = want is not None and (got == want or abs(got - want) <= tolerance)
        if not ok:
            self.wrong.append((n, device, name, labels, got, want, field))
            cells = self.devices[device]["cells"]
            wrong_label = "far out of range" if out_of_physical_range(name, got, cells) else "in range"
            want_text = "none" if want is None else f"{want:.6g}"
            if self.args.verbose or len(self.wrong) <= 200:
                log(f"WRONG scrape {n}: {device} {name}{{{fmt_labels(labels)}}} exported {got:.6g}, "
                    f"truth {want_text} ({field}; {wrong_label})")
            elif len(self.wrong) == 201:
                log("WRONG: more than 200 wrong samples; the rest are only counted (--verbose prints all)")

    def polls(self):
        return sum(v for (name, _), v in self.last.items() if name == "bms_polls_total")


def fmt_labels(labels):
    return ",".join(f'{k}="{v}"' for k, v in labels if k != "device")


def summary(soak, args, stats, wall):
    rss0, cpu0 = stats[0]
    rss1, cpu1 = stats[1]
    samples = soak.last
    lines = []
    add = lines.append
    add("")
    add("== soak summary")
    add(f"duration                 {wall:.0f} s, seed {args.seed}, fault rate {args.rate:g} of each kind")
    add(f"scrapes                  {soak.scrapes}")
    add(f"polls                    {soak.polls():.0f}")
    polls = {dict(l)["device"]: v for (name, l), v in samples.items() if name == "bms_polls_total"}
    add("  by device              " + ", ".join(f"{d} {polls.get(d, 0):.0f}" for d in soak.devices))
    add("faults injected by kind  (from the truth files)")
    totals = {}
    per_device = {}
    for device, d in soak.devices.items():
        with open(d["truth_path"]) as f:
            faults = json.load(f).get("faults", {})
        per_device[device] = faults
        for kind, count in faults.items():
            totals[kind] = totals.get(kind, 0) + count
    width = max([len(k) for k in totals] + [5])
    add("  " + "kind".ljust(width) + "  " + "  ".join(d.rjust(10) for d in soak.devices) + "       total")
    for kind in sorted(totals):
        row = "  ".join(str(per_device[d].get(kind, 0)).rjust(10) for d in soak.devices)
        add(f"  {kind.ljust(width)}  {row}  {str(totals[kind]).rjust(10)}")
    add(f"  {'all'.ljust(width)}  " + "  ".join(str(sum(per_device[d].values())).rjust(10) for d in soak.devices)
        + f"  {str(sum(totals.values())).rjust(10)}")
    add("poll failures by reason  (bms_poll_failures_total)")
    reasons = sorted({dict(l)["reason"] for (name, l), _ in samples.items() if name == "bms_poll_failures_total"})
    failures = {(dict(l)["device"], dict(l)["reason"]): v for (name, l), v in samples.items()
                if name == "bms_poll_failures_total"}
    add("  " + "reason".ljust(16) + "  ".join(d.rjust(10) for d in soak.devices))
    for reason in reasons:
        add("  " + reason.ljust(16) + "  ".join(f"{failures.get((d, reason), 0):.0f}".rjust(10)
                                                  for d in soak.devices))
    resync = {dict(l)["device"]: v for (name, l), v in samples.items() if name == "bms_resync_bytes_total"}
    add("  " + "resync bytes".ljust(16) + "  ".join(f"{resync.get(d, 0):.0f}".rjust(10) for d in soak.devices))
    add("  " + "scrapes up=0".ljust(16) + "  ".join(str(soak.down_scrapes[d]).rjust(10) for d in soak.devices))
    add(f"samples compared         {soak.compared}")
    add(f"samples wrong            {len(soak.wrong)}")
    groups = {}
    for n, device, name, labels, got, want, field in soak.wrong:
        far = "far out of range" if out_of_physical_range(name, got, soak.devices[device]["cells"]) else "in range"
        group = (device, name, field, far)
        groups.setdefault(group, []).append(n)
    for (device, name, field, far), scrapes in sorted(groups.items()):
        add(f"  {device:<11} {name:<42} {far:<17} {len(scrapes):>5} (scrapes {scrapes[0]}…{scrapes[-1]})")
    add(f"series missing (fresh)   {soak.missing} (in {sum(soak.missing_scrapes.values())} device-scrapes)")
    for (device, name), count in sorted(soak.missing_by.items()):
        add(f"  {device:<11} {name:<42} {count:>7}")
    never = [d for d in soak.devices if d not in soak.complete_at]
    add("first complete scrape    " + ", ".join(f"{d} {soak.complete_at.get(d, 'never')}" for d in soak.devices))
    add(f"serve RSS                start {rss0 / 1024:.1f} MiB, end {rss1 / 1024:.1f} MiB")
    add(f"serve CPU                {cpu1 - cpu0:.1f} s during the run ({cpu1:.1f} s in all)")
    add("not compared, on purpose (no truth to compare with): "
        + ", ".join(f"{k} ({v} samples)" for k, v in sorted(soak.unchecked.items())))
    for field, why in SKIPPED_TRUTH_FIELDS.items():
        add(f"  truth field {field}: {why}")
    log("\n".join(lines))
    failed = bool(soak.wrong) or soak.missing > 0 or bool(never) or soak.polls() == 0
    verdict = "FAIL" if failed else "PASS"
    why = []
    if soak.wrong:
        why.append(f"{len(soak.wrong)} wrong")
    if soak.missing:
        why.append(f"{soak.missing} missing while fresh")
    if never:
        why.append("never complete: " + ", ".join(never))
    log(f"soak: {verdict}" + (f" ({'; '.join(why)})" if why else ""))
    return 1 if failed else 0


def run(args):
    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        raise RunError(f"{binary} is not an executable: build it first (cargo build --locked)")
    workdir = tempfile.mkdtemp(prefix="bms-soak-")
    log(f"soak: working in {workdir}")
    faults = FAULT_KINDS if args.faults == "all" else [
        next((k for k in FAULT_KINDS if k.split(":")[0] == name), name) for name in args.faults.split(",")]
    try:
        devices = {}
        config = ["defaults:", f"  timeout: {TIMEOUT_MS}ms", "  retries: 3", "  request_gap: 0ms",
                  "  max_age: 0s", f"  stale_after: {STALE_AFTER_S:.0f}s", "devices:"]
        chosen = [d for d in DEVICES if args.devices == "all" or d[0] in args.devices.split(",")]
        if not chosen:
            raise RunError(f"--devices {args.devices!r} names none of " + ", ".join(d[0] for d in DEVICES))
        for i, (device, protocol, sim_args, extra) in enumerate(chosen):
            addr, truth_path = start_simulator(binary, workdir, protocol, sim_args, faults, args.rate,
                                               args.seed + i, args.baud)
            config.append(f"  - name: {device}\n    protocol: {protocol}\n    tcp: {addr}\n{extra.rstrip()}")
            with open(truth_path) as f:
                truth = json.load(f)
            devices[device] = {"protocol": protocol, "truth_path": truth_path,
                               "cells": max(len(p["cell_volts"]) for p in truth["packs"]),
                               "expected": expected_series(device, protocol, truth), "alarms": alarm_truth(truth)}
        config_path = os.path.join(workdir, "bms.yaml")
        with open(config_path, "w") as f:
            f.write("\n".join(line for line in config if line) + "\n")
        exporter, addr = start_exporter(binary, workdir, config_path)
        log(f"soak: serve at {addr}; simulators: "
            + ", ".join(f"{d} ({v['protocol']}, {len(v['expected'])} series)" for d, v in devices.items())
            + f"; faults {', '.join(faults)} at {args.rate:g} each")
        soak = Soak(args, devices, addr)
        start_stats = proc_stats(exporter.pid)
        started = time.monotonic()
        next_report = started + 15
        interrupted = None
        try:
            if args.probe:
                probe_run(soak, args, exporter, workdir, started)
            while not args.probe:
                if exporter.poll() is not None:
                    raise RunError(f"the exporter exited ({exporter.returncode}) during the run:\n"
                                   + open(os.path.join(workdir, "serve.log")).read()[-4000:])
                scrape_started = time.monotonic()
                soak.scrape()
                elapsed = time.monotonic() - started
                if args.polls and soak.polls() >= args.polls:
                    break
                if elapsed >= args.duration:
                    break
                time.sleep(max(0.0, scrape_started + MIN_SCRAPE_INTERVAL_S - time.monotonic()))
                if time.monotonic() >= next_report:
                    next_report += 15
                    log(f"soak: {elapsed:.0f} s, {soak.scrapes} scrapes, {soak.polls():.0f} polls, "
                        f"{len(soak.wrong)} wrong, {soak.missing} missing")
        except KeyboardInterrupt as stop:
            # A long run stopped early still reports what it saw, then exits as interrupted.
            interrupted = stop
        wall = time.monotonic() - started
        end_stats = proc_stats(exporter.pid)
        status = summary(soak, args, (start_stats, end_stats), wall)
        if interrupted is not None:
            log(f"soak: interrupted ({interrupted}) after {wall:.0f} s; the summary covers that part")
            raise interrupted
        return status
    finally:
        stop_children()
        if args.keep:
            log(f"soak: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def probe_run(soak, args, exporter, workdir, started):
    """--probe: every device scraped through /probe by a thread of its own, so a slow device (Sinowealth settles
    each register on the line's quiet) does not hold the others' polls back; stops like the /metrics loop."""
    stop = threading.Event()
    errors = []

    def loop(device):
        try:
            while not stop.is_set():
                begun = time.monotonic()
                soak.probe(device)
                stop.wait(max(0.0, begun + MIN_SCRAPE_INTERVAL_S - time.monotonic()))
        except Exception as error:  # reported by the main thread, which stops the run
            errors.append(f"{device}: {error!r}")
            stop.set()

    threads = [threading.Thread(target=loop, args=(device,), daemon=True) for device in soak.devices]
    for t in threads:
        t.start()
    next_report = started + 15
    try:
        while not stop.is_set():
            stop.wait(0.2)
            if exporter.poll() is not None:
                raise RunError(f"the exporter exited ({exporter.returncode}) during the run:\n"
                               + open(os.path.join(workdir, "serve.log")).read()[-4000:])
            elapsed = time.monotonic() - started
            with soak.lock:
                polls, wrong, missing, scrapes = soak.polls(), len(soak.wrong), soak.missing, soak.scrapes
            if (args.polls and polls >= args.polls) or elapsed >= args.duration:
                break
            if time.monotonic() >= next_report:
                next_report += 15
                log(f"soak: {elapsed:.0f} s, {scrapes} scrapes, {polls:.0f} polls, {wrong} wrong, {missing} missing")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    if errors:
        raise RunError("a probe thread failed: " + "; ".join(errors))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds to scrape (default 120, or no limit with --polls)")
    parser.add_argument("--polls", type=int, default=0, help="stop after this many polls in all (0: no limit)")
    parser.add_argument("--rate", type=float, default=0.05, help="rate of each fault kind per request (0.05)")
    parser.add_argument("--seed", type=int, default=1, help="simulator seed (each device adds its index)")
    parser.add_argument("--binary", default="target/debug/bms_exporter", help="the bms_exporter to run")
    parser.add_argument("--faults", default="all",
                        help="comma-separated kinds to inject (default all: " + ", ".join(FAULT_KINDS) + ")")
    parser.add_argument("--baud", type=int, default=0, help="simulated line speed (0: no pacing, the default)")
    parser.add_argument("--devices", default="all",
                        help="comma-separated devices to run (default all: " + ", ".join(d[0] for d in DEVICES)
                             + "); the first gets --seed, the next --seed + 1, …")
    parser.add_argument("--probe", action="store_true",
                        help="scrape each device's /probe from a thread of its own instead of /metrics in one loop "
                             "(more polls per minute: the long runs use it)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, truth, config)")
    parser.add_argument("--verbose", action="store_true", help="print every wrong and missing sample")
    args = parser.parse_args()
    if args.duration is None:
        args.duration = math.inf if args.polls else 120.0
    if not 0 <= args.rate <= 1:
        parser.error("--rate must be from 0 to 1")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # Both, explicitly: a shell starts a background job with SIGINT ignored, and Ctrl-C must still stop the children.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sys.exit(run(args))
    except RunError as error:
        log(f"soak: could not run: {error}")
        sys.exit(2)
    except KeyboardInterrupt:
        log("soak: interrupted; every child stopped")
        sys.exit(130)


if __name__ == "__main__":
    main()
