#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: installs what the tests need, then runs every check.
# README.md names this script as the test command and .ci/run calls it, so CI and developers run the same thing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

echo "== system packages"
# Real peers the tests start: a Prometheus server and promtool (tests/exporter.rs, observability.rs,
# prometheus_rules.rs), amtool, openssl for a test certificate, curl as a TLS client, strace to hold the
# systemd unit's syscall filter against the exporter's calls (tests/deploy.rs), jq, which the Home Assistant
# add-on's run.sh needs (tests/addon.rs), and the mosquitto broker with its clients for the MQTT tests
# (tests/mqtt*.rs), and for the Bluetooth tests (tests/ble*.rs) a private dbus-daemon with a mock BlueZ from
# python3-dbusmock, driven with gdbus, and a headless Chromium that loads the landing page and takes a phone-sized
# screenshot of it (tests/landing.rs). Installed only when missing; the tests fail loudly without them.
# mosquitto lives in /usr/sbin, which a non-root PATH may lack.
need=()
for pair in prometheus:prometheus amtool:prometheus-alertmanager openssl:openssl curl:curl strace:strace jq:jq \
  mosquitto:mosquitto mosquitto_sub:mosquitto-clients dbus-daemon:dbus-daemon gdbus:libglib2.0-bin \
  chromium:chromium; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
# dbusmock is a Python module, not a command; the mock runs under the system python3, which is where Debian puts it
# (with the python3-dbus and python3-gi it needs), so check it there rather than in any venv.
/usr/bin/python3 -c 'import dbusmock' 2>/dev/null || need+=(python3-dbusmock)
if ((${#need[@]})); then
  as_root=""; [ "$(id -u)" = 0 ] || as_root="sudo"
  # The prometheus, prometheus-alertmanager and mosquitto packages start a system service as they install (and
  # enable it for boot). The tests start their own instances on free loopback ports, so a developer's machine must
  # not be left running daemons it never asked for. A policy-rc.d answering 101 ("action forbidden") stops the
  # packages' scripts from starting anything. It is created only when none exists (container images often ship
  # their own, which is then left alone) and removed again on any exit, failure included.
  policy=/usr/sbin/policy-rc.d
  made_policy=""
  drop_policy() { if [ -n "$made_policy" ]; then $as_root rm -f "$policy"; made_policy=""; fi; }
  if [ ! -e "$policy" ]; then
    trap drop_policy EXIT
    made_policy=1
    printf '#!/bin/sh\n# Written by bms_exporter scripts/test.sh while it installs packages; removed when it ends.\nexit 101\n' |
      $as_root tee "$policy" >/dev/null
    $as_root chmod 0755 "$policy"
  fi
  $as_root apt-get update -qq
  # sudo resets the environment, so the front end is passed through env rather than set in front of sudo.
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  drop_policy
  trap - EXIT
  # The same packages also enabled their service for the next boot: undo that for the packages this run installed
  # (a service that was installed before is left as its owner set it). Without systemd (a CI container) there is
  # nothing to undo, and disabling never starts or stops anything.
  if command -v systemctl >/dev/null 2>&1; then
    for package in prometheus prometheus-alertmanager mosquitto; do
      case " ${need[*]} " in
        *" $package "*) $as_root systemctl disable --quiet "$package.service" 2>/dev/null || true ;;
      esac
    done
  fi
fi

echo "== python peers"
# The independent client the simulator must satisfy (issue #4): daly-bms-cli from PyPI, in a venv under target/;
# the official Python Prometheus client, whose OpenMetrics parser must accept /metrics (tests/metrics.rs);
# kubernetes-validate, whose bundled schemas check deploy/kubernetes offline (tests/deploy.rs); paho-mqtt for
# daly-bms-cli --mqtt (tests/mqtt_compat.rs), a 1.x release: dalybms 0.5.0 calls paho.Client() without the
# callback API version that 2.x requires.
venv=target/py
if ! "$venv/bin/python" -c "import dalybms, serial, prometheus_client, kubernetes_validate, paho.mqtt.client" 2>/dev/null; then
  rm -rf "$venv"
  mkdir -p target
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check dalybms==0.5.0 pyserial==3.5 prometheus-client==0.26.0 kubernetes-validate==1.37.0 paho-mqtt==1.6.1
fi
export BMS_DALY_BMS_CLI="$PWD/$venv/bin/daly-bms-cli"

echo "== home assistant"
# Home Assistant's own code judges the MQTT discovery configs (tests/mqtt_discovery.rs runs
# scripts/ha-check-discovery.py with this venv's python). 2024.3.3 is the newest release Python 3.11 can run, and it
# only works with dependencies of its own time: a current pip for --uploaded-prior-to, then the cutoff and the
# pins that keep it from starting in recovery mode. About 700 MB and 40 s, once; cached under target/ like the rest.
ha=target/ha
if ! "$ha/bin/python" -c "import homeassistant" 2>/dev/null; then
  rm -rf "$ha"
  mkdir -p target
  python3 -m venv "$ha"
  "$ha/bin/pip" install --quiet --disable-pip-version-check -U pip
  "$ha/bin/pip" install --quiet --disable-pip-version-check --uploaded-prior-to 2024-03-30T00:00:00Z \
    homeassistant==2024.3.3 paho-mqtt==1.6.1 janus==1.0.0 Pillow==10.2.0 home-assistant-frontend==20240307.0 \
    psutil-home-assistant==0.0.1 SQLAlchemy==2.0.27 fnv-hash-fast==0.5.0 securetar==2024.2.1 PyTurboJPEG==1.7.1 \
    numpy==1.26.0
fi
export BMS_HA_PYTHON="$PWD/$ha/bin/python"

echo "== formatting"
cargo fmt --check
echo "== clippy"
cargo clippy --locked --all-targets --all-features -- -D warnings
echo "== layering"
bash scripts/check-layers.sh
echo "== soak"
# Issue 12's soak harness, 2 minutes: simulators of all four protocols with every fault kind at 5 % → serve →
# every scraped value compared with the truth. The debug binary is the one cargo test builds anyway (a release
# build would add minutes of compiling; the exporter polls here at well under 1 % of one core). A failed soak
# fails the run, but only after the tests, so their summary stays the last output.
cargo build --locked
soak=0
python3 scripts/soak.py --duration 120 --binary "${CARGO_TARGET_DIR:-target}/debug/bms_exporter" || soak=$?
[ "$soak" = 0 ] || echo "== soak FAILED (exit $soak): the run fails once the tests below have run" >&2
echo "== tests"
cargo test --locked
exit "$soak"
