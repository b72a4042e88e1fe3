# Checks MQTT discovery configs (and the templates' use of state messages) with Home Assistant's own code.
"""Validate Home Assistant MQTT discovery messages the way Home Assistant itself would.

Run with the Python of a venv that has `homeassistant` installed (scripts/test.sh builds one at target/ha):

    target/ha/bin/python scripts/ha-check-discovery.py [--prefix homeassistant] [--require-values] [FILE]

Input (FILE, or stdin when absent or `-`): JSON lines `{"topic": "...", "payload": "...", "retain": true}`;
`retain` is optional. A line whose topic is `<prefix>/.../config` is a discovery config; any other line is a
state message, which the templates of the discovered entities are rendered against.

Home Assistant drops what it cannot use quietly or with one log line, so each step below repeats what its code
does with a discovery message and turns its refusals, warnings and silent drops into failures:

1. Topic (components/mqtt/discovery.py): `<component>/[<node_id>/]<object_id>/config` with ids of
   `[a-zA-Z0-9_-]` only and a supported component, else HA ignores the message. Configs must be retained, or
   HA loses them when it restarts. An empty payload removes an entity: accepted, nothing else to check.
2. Payload: a JSON object. Abbreviations (ABBREVIATIONS, DEVICE_ABBREVIATIONS, ORIGIN_ABBREVIATIONS) and `~`
   are expanded as HA does; a key given both abbreviated and in full is a failure (HA keeps one silently).
   `origin` must pass MQTT_ORIGIN_INFO_SCHEMA, or HA drops the whole message.
3. Schema: the component's DISCOVERY_SCHEMA (types, topics, templates compiled, device identifiers, availability).
   DISCOVERY_SCHEMA removes unknown top-level keys silently, which would hide a typo, so every key must also be
   one the schema knows.
4. Entity setup: `unique_id` unique per component (HA refuses the second), `object_id` unique per component and
   already a slug (HA slugifies it into the entity id), the same device description wherever the same device
   identifier appears (HA keeps whichever came last), no `config` entity category on sensors.
5. Sensors (components/sensor): no unit on a non-numeric device class (HA raises), the unit one of
   DEVICE_CLASS_UNITS of the device class and the state class one of DEVICE_CLASS_STATE_CLASSES (HA warns).
6. States: each `value_template` and `json_attributes_template` is rendered with HA's template engine against
   every state message on the entity's state topic. Failures: a template error or an undefined-variable
   warning; a numeric sensor whose result is neither a number nor `None` (HA's unknown); an empty result (HA
   keeps the old value without a word); a text state over 255 characters (HA rejects it); a binary sensor or
   switch result other than its on/off payloads or `None`; attributes that are not a JSON object. With
   `--require-values`, every entity must have a state message and no result may be unknown (`None`, `unknown`).

Exit status 0 with a summary line, 1 with one line per failure (topic first), 2 on bad usage or input.
"""

import argparse
import asyncio
import importlib
import json
import logging
import re
import sys

import voluptuous as vol

try:
    from homeassistant.components.mqtt import discovery as ha_discovery
    from homeassistant.components.mqtt.abbreviations import (
        ABBREVIATIONS,
        DEVICE_ABBREVIATIONS,
        ORIGIN_ABBREVIATIONS,
    )
    from homeassistant.components.sensor import _numeric_state_expected
    from homeassistant.components.sensor.const import (
        DEVICE_CLASS_STATE_CLASSES,
        DEVICE_CLASS_UNITS,
        NON_NUMERIC_DEVICE_CLASSES,
    )
    from homeassistant.const import MAX_LENGTH_STATE_STATE
    from homeassistant.core import HomeAssistant
    from homeassistant.util import slugify
except ImportError as err:  # the wrong interpreter: say which one is needed
    print(f"ha-check-discovery: needs the Python of a venv with homeassistant installed ({err})", file=sys.stderr)
    sys.exit(2)

PAYLOAD_NONE = "None"  # what HA's MQTT platforms turn into an unknown state
UNKNOWN = "unknown"  # HA's own state string for an unknown value
RENDER_FAILED = object()


def die(message):
    """Bad usage or input: exit 2, so it is never mistaken for a failed check (1)."""
    print(f"ha-check-discovery: {message}", file=sys.stderr)
    sys.exit(2)


class Failures:
    """Failures in input order, each with the topic it is about."""

    def __init__(self):
        self.lines = []

    def add(self, topic, message):
        self.lines.append(f"{topic}: {message}")


class TemplateLog(logging.Handler):
    """Collects what HA's template engine logs while rendering (undefined variables, render errors)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())

    def take(self):
        records, self.records = self.records, []
        return records


def schema_keys(schema):
    """Every top-level key a voluptuous schema (or vol.All of schemas) knows."""
    keys = set()
    if isinstance(schema, vol.All):
        for validator in schema.validators:
            keys |= schema_keys(validator)
    elif isinstance(schema, vol.Schema) and isinstance(schema.schema, dict):
        keys |= {str(getattr(marker, "schema", marker)) for marker in schema.schema}
    return keys


def expand(mapping, table, topic, where, failures):
    """Expand abbreviated keys in place as HA does, failing on a key given twice."""
    for key in list(mapping):
        full = table.get(key, key)
        if full != key:
            if full in mapping:
                failures.add(topic, f"{where}'{key}' and '{full}' are the same key (HA keeps one of them)")
            mapping[full] = mapping.pop(key)


def expand_payload(payload, topic, failures):
    """HA's discovery pre-processing: abbreviations, origin check, `~` base topic. False if HA drops it."""
    expand(payload, ABBREVIATIONS, topic, "", failures)
    if isinstance(payload.get("device"), dict):
        expand(payload["device"], DEVICE_ABBREVIATIONS, topic, "device: ", failures)
    if "origin" in payload:
        try:
            expand(payload["origin"], ORIGIN_ABBREVIATIONS, topic, "origin: ", failures)
            ha_discovery.MQTT_ORIGIN_INFO_SCHEMA(payload["origin"])
        except Exception as err:  # HA catches everything here and drops the message
            failures.add(topic, f"origin is refused, HA drops the whole message: {err}")
            return False
    availability = payload.get("availability")
    for entry in availability if isinstance(availability, list) else [availability]:
        if isinstance(entry, dict):
            expand(entry, ABBREVIATIONS, topic, "availability: ", failures)
    if "~" in payload:
        base = payload.pop("~")
        for key, value in payload.items():
            if isinstance(value, str) and value and key.endswith("topic"):
                if value[0] == "~":
                    payload[key] = f"{base}{value[1:]}"
                if value[-1] == "~":
                    payload[key] = f"{value[:-1]}{base}"
        for entry in availability if isinstance(availability, list) else [availability]:
            if isinstance(entry, dict) and isinstance(entry.get("topic"), str) and entry["topic"]:
                t = entry["topic"]
                if t[0] == "~":
                    entry["topic"] = f"{base}{t[1:]}"
                if t[-1] == "~":
                    entry["topic"] = f"{t[:-1]}{base}"
    return True


def check_sensor(config, topic, failures):
    """What SensorEntity checks when it writes a state: unit and state class against the device class."""
    device_class = config.get("device_class")
    state_class = config.get("state_class")
    unit = config.get("unit_of_measurement")
    if device_class is None:
        return
    if device_class in NON_NUMERIC_DEVICE_CLASSES and unit:
        failures.add(topic, f"unit '{unit}' on the non-numeric device class '{device_class}'")
    units = DEVICE_CLASS_UNITS.get(device_class)
    if units is not None and unit not in units:
        allowed = sorted(str(u) for u in units if u is not None)
        failures.add(topic, f"'{unit}' is not a valid unit for the device class '{device_class}': {allowed}")
    classes = DEVICE_CLASS_STATE_CLASSES.get(device_class)
    if state_class and classes is not None and state_class not in classes:
        allowed = sorted(str(c) for c in classes)
        failures.add(topic, f"state class '{state_class}' is impossible for device class '{device_class}': {allowed}")


def render(template, payload, log):
    """Render like HA's MQTT value templates do: `value` and `value_json` set, HA's filters and undefined."""
    result = template.async_render_with_possible_json_value(payload, RENDER_FAILED)
    return result, log.take()


async def render_all(entities, states, require, log, failures):
    """Render every entity's templates; HA's template engine needs a (bare, never started) HomeAssistant."""
    hass = HomeAssistant("/nonexistent")
    try:
        return sum(check_renders(hass, entity, states, require, log, failures) for entity in entities)
    finally:
        await hass.async_stop(force=True)


def check_renders(hass, entity, states, require, log, failures):
    """Render an entity's templates against the state messages of its state topic."""
    component, topic, config = entity
    for key in ("value_template", "json_attributes_template"):
        if config.get(key) is not None:
            config[key].hass = hass
    state_topic = config.get("state_topic")
    if state_topic is None:
        return 0
    payloads = states.get(state_topic, [])
    if not payloads:
        if require:
            failures.add(topic, f"no state message on its state topic {state_topic}")
        return 0
    count = 0
    for payload in payloads:
        template = config.get("value_template")
        if template is not None:
            value, logged = render(template, payload, log)
            count += 1
            if value is RENDER_FAILED or logged:
                failures.add(topic, f"value_template {template.template!r} fails on {payload}: {logged}")
                continue
            check_value(component, config, str(value), topic, require, failures)
        attributes = config.get("json_attributes_template")
        if attributes is not None:
            value, logged = render(attributes, payload, log)
            count += 1
            if value is RENDER_FAILED or logged:
                failures.add(topic, f"json_attributes_template fails on {payload}: {logged}")
                continue
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                failures.add(topic, f"json_attributes_template gives {value!r}, not a JSON object")
    return count


def check_value(component, config, value, topic, require, failures):
    """A rendered state as the component's entity would take it."""
    if require and value in (PAYLOAD_NONE, UNKNOWN):
        failures.add(topic, f"renders unknown ({value!r}) although the state message is complete")
    if value == "":
        failures.add(topic, "renders an empty string (HA keeps the previous state and logs nothing)")
        return
    if component == "sensor":
        numeric = _numeric_state_expected(
            config.get("device_class"),
            config.get("state_class"),
            config.get("unit_of_measurement"),
            config.get("suggested_display_precision"),
        )
        if numeric and value != PAYLOAD_NONE:
            try:
                float(value)
            except ValueError:
                failures.add(topic, f"numeric sensor renders {value!r}, not a number")
        if not numeric and len(value) > MAX_LENGTH_STATE_STATE:
            failures.add(topic, f"state of {len(value)} characters (HA rejects more than {MAX_LENGTH_STATE_STATE})")
    elif component == "binary_sensor":
        allowed = {config["payload_on"], config["payload_off"], PAYLOAD_NONE}
        if value not in allowed:
            failures.add(topic, f"binary sensor renders {value!r}, not one of {sorted(allowed)}")
    elif component == "switch":
        allowed = {
            config.get("state_on") or config["payload_on"],
            config.get("state_off") or config["payload_off"],
            PAYLOAD_NONE,
        }
        if value not in allowed:
            failures.add(topic, f"switch renders {value!r}, not one of {sorted(allowed)}")


def read_lines(stream):
    """The JSON lines of the input, each {"topic", "payload", "retain"?}."""
    messages = []
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
            topic, payload = message["topic"], message["payload"]
        except (ValueError, KeyError, TypeError) as err:
            die(f"line {number}: not a {{topic, payload}} JSON object ({err})")
        if not isinstance(topic, str) or not isinstance(payload, str):
            die(f"line {number}: topic and payload must be strings")
        messages.append((topic, payload, message.get("retain")))
    return messages


class Checker:
    """Cross-message state: ids seen, device descriptions, entities to render."""

    def __init__(self, prefix, failures):
        self.prefix = prefix
        self.failures = failures
        self.schemas = {}
        self.topics = set()
        self.unique_ids = {}
        self.object_ids = {}
        self.devices = {}
        self.entities = []
        self.removals = 0

    def schema(self, component):
        if component not in self.schemas:
            module = importlib.import_module(f"homeassistant.components.mqtt.{component}")
            self.schemas[component] = getattr(module, "DISCOVERY_SCHEMA", None)
        return self.schemas[component]

    def discovery(self, topic, payload, retain):
        failures = self.failures
        if topic in self.topics:
            failures.add(topic, "published twice in one run")
        self.topics.add(topic)
        match = ha_discovery.TOPIC_MATCHER.fullmatch(topic[len(self.prefix) + 1 :])
        if not match:
            failures.add(topic, "not <component>/[<node_id>/]<object_id>/config with ids of [a-zA-Z0-9_-]")
            return
        component = match.group("component")
        if component not in ha_discovery.SUPPORTED_COMPONENTS:
            failures.add(topic, f"HA does not support the component '{component}'")
            return
        if retain is False:
            failures.add(topic, "not retained: HA loses it on restart")
        if payload == "":
            self.removals += 1
            return
        try:
            config = json.loads(payload)
        except ValueError as err:
            failures.add(topic, f"payload is not JSON ({err}): HA logs 'Unable to parse JSON'")
            return
        if not isinstance(config, dict):
            failures.add(topic, "payload is not a JSON object")
            return
        if not expand_payload(config, topic, failures):
            return
        schema = self.schema(component)
        if schema is None:
            failures.add(topic, f"no DISCOVERY_SCHEMA for '{component}' in this Home Assistant")
            return
        unknown = sorted(set(config) - schema_keys(schema))
        if unknown:
            failures.add(topic, f"keys HA does not know (dropped silently): {unknown}")
        try:
            validated = schema(dict(config))
        except vol.Invalid as err:
            failures.add(topic, f"HA's {component} DISCOVERY_SCHEMA refuses it: {err}")
            return
        self.entity(component, topic, validated)

    def entity(self, component, topic, config):
        failures = self.failures
        unique_id = config.get("unique_id")
        if unique_id is not None:
            first = self.unique_ids.setdefault((component, unique_id), topic)
            if first != topic:
                failures.add(topic, f"unique_id '{unique_id}' already used by {first}")
        object_id = config.get("object_id")
        if object_id is not None:
            if slugify(object_id.lower()) != object_id:
                failures.add(topic, f"object_id '{object_id}' becomes entity id '{slugify(object_id.lower())}'")
            first = self.object_ids.setdefault((component, object_id), topic)
            if first != topic:
                failures.add(topic, f"object_id '{object_id}' already used by {first}")
        device = config.get("device")
        if device:
            for identifier in device.get("identifiers", []):
                first = self.devices.setdefault(identifier, (topic, device))
                if first[1] != device:
                    failures.add(topic, f"device '{identifier}' described differently than in {first[0]}")
        if str(config.get("entity_category")) == "config" and component in ("sensor", "binary_sensor"):
            failures.add(topic, f"a {component} cannot have the entity category 'config'")
        if component == "sensor":
            check_sensor(config, topic, failures)
        self.entities.append((component, topic, config))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default="-", help="JSON lines; stdin when absent or -")
    parser.add_argument("--prefix", default="homeassistant", help="discovery prefix (default homeassistant)")
    parser.add_argument(
        "--require-values",
        action="store_true",
        help="every entity must find its value in a state message (for complete test states)",
    )
    args = parser.parse_args()
    if args.file == "-":
        messages = read_lines(sys.stdin)
    else:
        try:
            with open(args.file, encoding="utf-8") as stream:
                messages = read_lines(stream)
        except OSError as err:
            die(str(err))

    failures = Failures()
    checker = Checker(args.prefix, failures)
    states = {}
    config_topic = re.compile(re.escape(args.prefix) + r"/.*/config")
    for topic, payload, retain in messages:
        if config_topic.fullmatch(topic):
            checker.discovery(topic, payload, retain)
        else:
            states.setdefault(topic, []).append(payload)

    log = TemplateLog()
    template_logger = logging.getLogger("homeassistant.helpers.template")
    template_logger.addHandler(log)
    template_logger.propagate = False
    renders = asyncio.run(render_all(checker.entities, states, args.require_values, log, failures))

    if failures.lines:
        print("\n".join(failures.lines))
        print(f"ha-check-discovery: {len(failures.lines)} failure(s)", file=sys.stderr)
        return 1
    print(
        f"ok: {len(checker.entities)} discovery configs valid, {checker.removals} removals, "
        f"{sum(len(p) for p in states.values())} state messages, {renders} template renders"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
