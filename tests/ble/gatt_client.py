'''A small BlueZ GATT client over D-Bus, so the mock BlueZ (bluez_bms.py) can be tested without the exporter.

It does what a BMS client does on a real system bus: connect the device, wait for ServicesResolved, find the
characteristics by UUID among the device's objects, subscribe to notifications, write each request without
response and collect the notifications that follow, reconnecting when the link drops. It prints one JSON object:

    {"replies": [{"chunks": ["a501...", ...], "dropped": false}, ...], "connects": N}

Run with the system python3 (python3-dbus, python3-gi) and DBUS_SYSTEM_BUS_ADDRESS set to the mock's bus.
'''

import argparse
import json
import sys
import time

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

DEVICE_IFACE = 'org.bluez.Device1'
CHAR_IFACE = 'org.bluez.GattCharacteristic1'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', required=True, help='device object path')
    parser.add_argument('--notify', required=True, help='UUID of the notify characteristic')
    parser.add_argument('--write', required=True, help='UUID of the write characteristic')
    parser.add_argument('--extra', help='UUID of a characteristic to write one empty value to after subscribing')
    parser.add_argument('--request', action='append', default=[], help='request bytes as hex (repeatable)')
    parser.add_argument('--first-ms', type=int, default=2000, help='wait this long for a reply to start')
    parser.add_argument('--quiet-ms', type=int, default=250, help='a reply has ended after this much quiet')
    args = parser.parse_args()

    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.SystemBus()
    context = GLib.MainContext.default()
    state = {'connected': False, 'resolved': False, 'chunks': [], 'last': 0.0}

    def pump(until, seconds):
        '''Run the main loop until `until()` holds or `seconds` pass; True when it holds.'''
        deadline = time.monotonic() + seconds
        while not until():
            if time.monotonic() >= deadline:
                return False
            if not context.iteration(False):
                time.sleep(0.002)
        return True

    def changed(iface, props, _invalidated, path=None):
        if iface == DEVICE_IFACE and path == args.device:
            if 'Connected' in props:
                state['connected'] = bool(props['Connected'])
                if not state['connected']:
                    state['resolved'] = False
            if 'ServicesResolved' in props:
                state['resolved'] = bool(props['ServicesResolved'])
        elif iface == CHAR_IFACE and path == state.get('notify_path') and 'Value' in props:
            state['chunks'].append(bytes(props['Value']).hex())
            state['last'] = time.monotonic()

    # Subscribe before connecting, as bluez-async does, so no change is missed.
    bus.add_signal_receiver(changed, signal_name='PropertiesChanged', dbus_interface=dbus.PROPERTIES_IFACE,
                            bus_name='org.bluez', path_keyword='path')
    device = dbus.Interface(bus.get_object('org.bluez', args.device), DEVICE_IFACE)
    connects = 0

    def connect():
        nonlocal connects
        device.Connect()
        connects += 1
        state['connected'] = True
        if not pump(lambda: state['resolved'], 5):
            sys.exit('ServicesResolved never became true')
        objects = dbus.Interface(bus.get_object('org.bluez', '/'), 'org.freedesktop.DBus.ObjectManager') \
            .GetManagedObjects()
        chars = {str(props[CHAR_IFACE]['UUID']): str(path) for path, props in objects.items()
                 if CHAR_IFACE in props and str(path).startswith(args.device + '/')}
        for uuid in [args.notify, args.write] + ([args.extra] if args.extra else []):
            if uuid not in chars:
                sys.exit(f'no characteristic {uuid} on {args.device}: {sorted(chars)}')
        state['notify_path'] = chars[args.notify]
        char = lambda uuid: dbus.Interface(bus.get_object('org.bluez', chars[uuid]), CHAR_IFACE)  # noqa: E731
        char(args.notify).StartNotify()
        if args.extra:
            char(args.extra).WriteValue(dbus.Array([], signature='y'), {})
        return char(args.write)

    write = connect()
    replies = []
    for request in args.request:
        if not state['connected']:
            write = connect()
        state['chunks'] = []
        sent = time.monotonic()
        write.WriteValue(dbus.Array(bytes.fromhex(request), signature='y'),
                         {'type': dbus.String('command', variant_level=1)})
        pump(lambda: state['chunks'] or not state['connected'], args.first_ms / 1000)
        pump(lambda: not state['connected'] or time.monotonic() - state['last'] >= args.quiet_ms / 1000, 10)
        replies.append({'chunks': state['chunks'], 'dropped': not state['connected'],
                        'ms': round((state['last'] - sent) * 1000) if state['chunks'] else None})
    if state['connected']:
        device.Disconnect()
    json.dump({'replies': replies, 'connects': connects}, sys.stdout)
    print()


if __name__ == '__main__':
    main()
