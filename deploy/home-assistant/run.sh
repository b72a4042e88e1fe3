#!/usr/bin/env bash
# Home Assistant add-on entry point: turns the add-on's options (bmspace's option names, so its users can paste
# theirs) into a bms_exporter configuration file and runs the exporter on it.
#
# Environment: OPTIONS_FILE (default /data/options.json, where the Supervisor writes the options), CONFIG_FILE
# (default /data/bms_exporter.yml), PASSWORD_FILE (default mqtt.password beside CONFIG_FILE), RUN_SH_DRY_RUN=1
# (write the files, print the config path and exit instead of starting the exporter).
set -euo pipefail
# Errors inside $(...) stop the script too; every value is computed by a plain assignment for the same reason
# (a failure inside a command's arguments would not stop it).
shopt -s inherit_errexit

OPTIONS_FILE=${OPTIONS_FILE:-/data/options.json}
CONFIG_FILE=${CONFIG_FILE:-/data/bms_exporter.yml}
PASSWORD_FILE=${PASSWORD_FILE:-$(dirname "$CONFIG_FILE")/mqtt.password}

log() { echo "[bms_exporter add-on] $*" >&2; }
fail() {
  log "error: $*"
  exit 1
}

[[ -r $OPTIONS_FILE ]] || fail "cannot read the options file $OPTIONS_FILE"
jq -e 'type == "object"' "$OPTIONS_FILE" >/dev/null 2>&1 || fail "$OPTIONS_FILE is not a JSON object"

# One option as text; empty when it is missing or null. (jq's `//` would also swallow false, so no `//` here.)
opt() { jq -r --arg key "$1" 'if .[$key] == null then "" else .[$key] | tostring end' "$OPTIONS_FILE"; }
# One option, or the default when it is missing, null or empty.
opt_or() {
  local value
  value=$(opt "$1")
  echo "${value:-$2}"
}
# A value as a JSON string, which YAML reads as the same string: no option can break out of its line.
quote() { jq -rn --arg value "$1" '$value | tojson'; }
# A whole number within limits, or the add-on stops with the option named.
number() {
  local name=$1 value=$2 min=$3 max=$4
  [[ $value =~ ^[0-9]{1,6}$ ]] && ((10#$value >= min && 10#$value <= max)) ||
    fail "$name is \"$value\"; expected a whole number $min–$max"
  echo $((10#$value))
}
# A value that must be true or false.
boolean() {
  case $2 in
    true | false) echo "$2" ;;
    *) fail "$1 is \"$2\"; expected true or false" ;;
  esac
}
# host:port with an IPv6 address in brackets.
host_port() {
  if [[ $1 == *:* && $1 != \[* ]]; then echo "[$1]:$2"; else echo "$1:$2"; fi
}

protocol=$(opt_or protocol pace)
case $protocol in
  pace | daly | daly-modbus | sinowealth) ;;
  *) fail "protocol is \"$protocol\"; expected pace, daly, daly-modbus or sinowealth" ;;
esac
layout=$(opt_or layout bmspace)
case $layout in
  native | daly-bms-cli | bmspace) ;;
  *) fail "layout is \"$layout\"; expected bmspace, native or daly-bms-cli" ;;
esac

connection_type=$(opt_or connection_type IP)
case $connection_type in
  IP)
    bms_ip=$(opt bms_ip)
    [[ -n $bms_ip ]] || fail "connection_type is IP but bms_ip is empty: give the address of the RS485/RS232-to-Ethernet box"
    bms_port=$(number bms_port "$(opt_or bms_port 5000)" 1 65535)
    endpoint=$(host_port "$bms_ip" "$bms_port")
    transport="tcp: $(quote "$endpoint")"
    ;;
  Serial)
    bms_serial=$(opt_or bms_serial /dev/ttyUSB0)
    transport="serial: $(quote "$bms_serial")"
    ;;
  *) fail "connection_type is \"$connection_type\"; expected IP or Serial" ;;
esac

mqtt_host=$(opt_or mqtt_host core-mosquitto)
mqtt_port=$(number mqtt_port "$(opt_or mqtt_port 1883)" 1 65535)
broker="mqtt://$(host_port "$mqtt_host" "$mqtt_port")"
mqtt_user=$(opt mqtt_user)
mqtt_password=$(opt mqtt_password)
if [[ $layout == bmspace ]]; then default_prefix=bmspace; else default_prefix=bms; fi
topic_prefix=$(opt_or mqtt_base_topic "$default_prefix")
interval=$(number scan_interval "$(opt_or scan_interval 5)" 1 3600)
discovery=$(boolean mqtt_ha_discovery "$(opt_or mqtt_ha_discovery true)")
discovery_prefix=$(opt_or mqtt_ha_discovery_topic homeassistant)
control=$(boolean control "$(opt_or control false)")
pad_cells=$(number zero_pad_number_cells "$(opt_or zero_pad_number_cells 0)" 0 3)
pad_packs=$(number zero_pad_number_packs "$(opt_or zero_pad_number_packs 0)" 0 3)

# bmspace's debug_output 0–1 print status lines (our info level), 2 adds data (debug: every frame in hex),
# 3 everything (trace).
debug_output=$(number debug_output "$(opt_or debug_output 0)" 0 3)
case $debug_output in
  0 | 1) log_level=info ;;
  2) log_level=debug ;;
  *) log_level=trace ;;
esac

force_pack_offset=$(opt force_pack_offset)
if [[ -n $force_pack_offset && $force_pack_offset != 0 ]]; then
  log "force_pack_offset ($force_pack_offset) is ignored: packs are told apart by their reply length, no offset is needed"
fi
if [[ $layout != bmspace ]] && ((pad_cells + pad_packs > 0)); then
  log "zero_pad_number_cells and zero_pad_number_packs apply to layout bmspace only; ignored with layout $layout"
fi

# The password goes to a file only root can read; the configuration names the file and never holds the password.
rm -f "$PASSWORD_FILE"
if [[ -n $mqtt_password ]]; then
  [[ -n $mqtt_user ]] || fail "mqtt_password is set but mqtt_user is empty: the broker takes a password only with a user name"
  (
    umask 077
    printf '%s\n' "$mqtt_password" >"$PASSWORD_FILE"
  )
  chmod 0600 "$PASSWORD_FILE"
fi

{
  echo "# Written by the Home Assistant add-on from its options at every start: change the options, not this file."
  echo "devices:"
  echo "  - name: battery"
  echo "    protocol: $protocol"
  echo "    $transport"
  echo "mqtt:"
  echo "  broker: $(quote "$broker")"
  if [[ -n $mqtt_user ]]; then echo "  username: $(quote "$mqtt_user")"; fi
  if [[ -n $mqtt_password ]]; then echo "  password_file: $(quote "$PASSWORD_FILE")"; fi
  echo "  topic_prefix: $(quote "$topic_prefix")"
  echo "  interval: ${interval}s"
  echo "  layout: $layout"
  echo "  discovery:"
  echo "    enabled: $discovery"
  echo "    prefix: $(quote "$discovery_prefix")"
  echo "  control: $control"
  if [[ $layout == bmspace ]]; then
    echo "  zero_pad_number_cells: $pad_cells"
    echo "  zero_pad_number_packs: $pad_packs"
  fi
} >"$CONFIG_FILE.tmp"
mv "$CONFIG_FILE.tmp" "$CONFIG_FILE"

command=(bms_exporter serve --config "$CONFIG_FILE" --log.level "$log_level")
log "$protocol over $connection_type, MQTT to $broker in the $layout layout: ${command[*]}"
if [[ ${RUN_SH_DRY_RUN:-0} == 1 ]]; then
  echo "$CONFIG_FILE"
  exit 0
fi
exec "${command[@]}"
