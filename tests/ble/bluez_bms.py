'''Mock BlueZ (a python-dbusmock template) whose Daly BMS dongles answer through `bms_exporter simulate --tcp`.

The machine that runs the tests has no Bluetooth (no controller, no kernel support), so the Bluetooth tests talk to
this instead of bluetoothd: the stock `bluez5` template (adapters, devices) plus, per device, the GATT objects a
Daly dongle exposes, with BlueZ's object paths, interfaces and properties, and a bridge that carries each write to
a simulator over TCP and its answer back as notifications. Load it with

    DBUS_SYSTEM_BUS_ADDRESS=... /usr/bin/python3 -m dbusmock --system --template tests/ble/bluez_bms.py

and drive it through the org.bluez.Mock interface on object `/`:

    AddAdapter(s name, s alias) -> s path                     stock: AddAdapter hci0 host
    AddDevice(s adapter, s address, s name) -> s path         stock, plus Connect/Disconnect as BlueZ does them
                                                              (Connect takes CONNECT_MS, one at a time per adapter)
    AddDalyA5Gatt(s device, s sim_addr, b extra_char) -> s    service fff0 (A5 protocol dongle)
    AddDalyModbusGatt(s device, s sim_addr) -> s              service ff00 (Modbus-style DL- module)
    SetSplit(s device, s split, u seed)                       how a reply is cut into notifications
    SetDeviceMode(s device, s mode)                           faults: normal, garbage, silent, disconnect_next,
                                                              unreachable
    DisconnectAfter(s device, u writes)                       disconnect_next once `writes` more writes were
                                                              answered
    GetDeviceStats(s device) -> s                             JSON counters (writes, notifications, ...)
    GetAdapterStats(s adapter) -> s                           JSON: Connect calls refused with InProgress
    SetDeviceRssi(s device, n rssi)                           the signal strength the device is heard at

`sim_addr` is `HOST:PORT` of a running simulator. Each device keeps one TCP connection to it (opened at the first
write, reopened after a disconnect), as a dongle keeps its UART.
'''

import json
import random
import socket
import sys

import dbus
from gi.repository import GLib

from dbusmock import mockobject
from dbusmock.templates import bluez5 as base
# The stock methods (AddAdapter, RemoveDevice, PairDevice, ...) become this template's: dbusmock collects every
# D-Bus method defined at module level. AddDevice is redefined below.
from dbusmock.templates.bluez5 import *  # noqa: F401,F403

BUS_NAME = base.BUS_NAME
MAIN_OBJ = base.MAIN_OBJ
SYSTEM_BUS = base.SYSTEM_BUS
IS_OBJECT_MANAGER = base.IS_OBJECT_MANAGER

MOCK_IFACE = base.BLUEZ_MOCK_IFACE
DEVICE_IFACE = base.DEVICE_IFACE
SERVICE_IFACE = 'org.bluez.GattService1'
CHAR_IFACE = 'org.bluez.GattCharacteristic1'
DESC_IFACE = 'org.bluez.GattDescriptor1'
OM_IFACE = 'org.freedesktop.DBus.ObjectManager'


def uuid16(short):
    '''A 16-bit UUID in the Bluetooth base UUID, the form BlueZ reports.'''
    return f'0000{short}-0000-1000-8000-00805f9b34fb'


# A UART dongle's link layer sends what fits in one ATT notification: 20 bytes at the default ATT MTU of 23.
ATT_MTU = 23
MTU_CHUNK = ATT_MTU - 3
# A reply has ended when the simulator has been quiet this long. The simulator's gaps inside one reply are about a
# millisecond (bytes paced like a 9600 baud line); its turnaround before a reply is 10 ms by default.
QUIET_MS = 60
# BlueZ reports ServicesResolved a moment after Connected (after discovering, or loading cached, services); the
# delay makes a client that does not wait for it fail here as it would on hardware.
RESOLVE_MS = 20
# An LE connection takes a while to establish (the controller waits for the peer's next advertisement, then the
# connection events); BlueZ answers Connect only then. While one is pending, the adapter refuses another Connect
# with InProgress ("Operation already in progress"), as bluetoothd does: a client that connects two modules at once
# on one adapter fails here as it would on hardware.
CONNECT_MS = 100

SPLITS = ('mtu', 'random', 'joined')
MODES = ('normal', 'garbage', 'silent', 'disconnect_next', 'unreachable')


class Link:
    '''One dongle: its GATT object paths, its simulator connection and the knobs the tests turn.'''

    def __init__(self, device_path, kind, sim_addr):
        host, _, port = sim_addr.rpartition(':')
        if not host or not port.isdigit():
            raise dbus.exceptions.DBusException(f'sim_addr must be HOST:PORT, not {sim_addr!r}',
                                                name=MOCK_IFACE + '.InvalidArguments')
        self.device_path = device_path
        self.kind = kind
        self.sim = (host, int(port))
        self.notify_path = None
        # The extra service's own notify characteristic (old modules only); its subscription drops with the link.
        self.extra_notify_path = None
        self.extra_path = None
        self.sock = None
        self.watch = None
        self.timer = None
        self.rx = bytearray()
        self.split = 'mtu'
        self.rng = random.Random(0)
        self.mode = 'normal'
        # Writes still answered before the dongle goes away as in disconnect_next (DisconnectAfter); None: never.
        self.drop_after = None
        self.stats = {
            'connects': 0, 'disconnects': 0, 'writes': 0, 'forwarded': 0, 'swallowed': 0, 'replies': 0,
            'notifications': 0, 'garbage_notifications': 0, 'unheard': 0, 'sim_connections': 0,
            'sim_errors': 0, 'write_types': [], 'extra_writes': [],
        }

    # --- the simulator side ---

    def forward(self, data):
        if self.sock is None:
            try:
                sock = socket.create_connection(self.sim, timeout=2)
            except OSError as e:
                # A BMS that is off behind a powered dongle: the write succeeds, nothing ever answers.
                self.stats['sim_errors'] += 1
                log(f'{self.device_path}: simulator {self.sim} unreachable: {e}')
                return
            sock.setblocking(False)
            self.sock = sock
            self.stats['sim_connections'] += 1
            self.watch = GLib.io_add_watch(sock.fileno(), GLib.PRIORITY_DEFAULT,
                                           GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, self._readable)
        try:
            self.sock.sendall(bytes(data))
            self.stats['forwarded'] += 1
        except OSError as e:
            self.stats['sim_errors'] += 1
            log(f'{self.device_path}: write to the simulator failed: {e}')
            self.close_sim()

    def _readable(self, _fd, _condition):
        try:
            chunk = self.sock.recv(4096)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b''
        if not chunk:
            # The simulator closed the line (its `close` fault, or it was stopped): pass on what came, reconnect
            # at the next write.
            self.watch = None
            self.close_sim(keep_rx=True)
            self.flush()
            return False
        self.rx.extend(chunk)
        if self.timer is not None:
            GLib.source_remove(self.timer)
        self.timer = GLib.timeout_add(QUIET_MS, self._quiet)
        return True

    def _quiet(self):
        self.timer = None
        self.flush()
        return False

    def close_sim(self, keep_rx=False):
        if self.watch is not None:
            GLib.source_remove(self.watch)
            self.watch = None
        if self.timer is not None:
            GLib.source_remove(self.timer)
            self.timer = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if not keep_rx:
            self.rx.clear()

    # --- the Bluetooth side ---

    def chunks(self, data):
        if self.split == 'joined' or len(data) < 2:
            return [data]
        if self.split == 'mtu':
            return [data[i:i + MTU_CHUNK] for i in range(0, len(data), MTU_CHUNK)]
        cuts = sorted(self.rng.sample(range(1, len(data)), self.rng.randint(1, min(5, len(data) - 1))))
        return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]

    def flush(self):
        data, self.rx = bytes(self.rx), bytearray()
        if not data or self.mode == 'silent':
            return
        self.stats['replies'] += 1
        for i, chunk in enumerate(self.chunks(data)):
            if self.mode == 'garbage' and (i > 0 or len(data) <= MTU_CHUNK):
                noise = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 4)))
                self.notify(noise)
                self.stats['garbage_notifications'] += 1
            self.notify(chunk)
            self.stats['notifications'] += 1

    def notify(self, data):
        char = mockobject.objects[self.notify_path]
        if not bool(char.props[CHAR_IFACE]['Notifying']):
            # BlueZ only turns notifications into signals for a client that called StartNotify.
            self.stats['unheard'] += 1
            return
        value = dbus.Array([dbus.Byte(b) for b in data], signature='y', variant_level=1)
        char.props[CHAR_IFACE]['Value'] = value
        # A notification reaches D-Bus clients (btleplug through bluez-async) only as this signal.
        char.EmitSignal(dbus.PROPERTIES_IFACE, 'PropertiesChanged', 'sa{sv}as', [CHAR_IFACE, {'Value': value}, []])


LINKS = {}


def log(message):
    sys.stderr.write(f'bluez_bms: {message}\n')
    sys.stderr.flush()


def load(mock, parameters):
    base.load(mock, parameters)


def _emit(obj, iface, changes):
    '''Set properties and announce them in one PropertiesChanged, as BlueZ does for each state change.'''
    for name, value in changes.items():
        obj.props[iface][name] = value
    obj.EmitSignal(dbus.PROPERTIES_IFACE, 'PropertiesChanged', 'sa{sv}as', [iface, changes, []])


def _is_connected(device):
    return bool(device.props[DEVICE_IFACE]['Connected'])


# Adapter object path -> the device whose Connect is pending on it.
CONNECTING = {}
# Connect calls refused with InProgress, per adapter path (GetAdapterStats).
REFUSED_IN_PROGRESS = {}


def _unreachable():
    # What bluetoothd answers when the peer does not respond to the connection request.
    return dbus.exceptions.DBusException('le-connection-abort-by-local', name='org.bluez.Error.Failed')


def _connect(device, ok, err):
    '''Device1.Connect, answered once the connection is up (CONNECT_MS later), or refused.'''
    link = LINKS.get(device.path)
    device.log('Connect')
    if link is not None and link.mode == 'unreachable':
        err(_unreachable())
        return
    if _is_connected(device):
        ok()  # BlueZ answers an LE Connect on a connected device with success.
        return
    adapter = str(device.props[DEVICE_IFACE]['Adapter'])
    if adapter in CONNECTING:
        REFUSED_IN_PROGRESS[adapter] = REFUSED_IN_PROGRESS.get(adapter, 0) + 1
        log(f'{device.path}: Connect refused, {CONNECTING[adapter]} is connecting on {adapter}')
        err(dbus.exceptions.DBusException('Operation already in progress', name='org.bluez.Error.InProgress'))
        return
    CONNECTING[adapter] = device.path

    def established():
        CONNECTING.pop(adapter, None)
        if link is not None and link.mode == 'unreachable':
            err(_unreachable())
            return False
        if link is not None:
            link.stats['connects'] += 1
        _emit(device, DEVICE_IFACE, {'Connected': dbus.Boolean(True, variant_level=1)})

        def resolved():
            if _is_connected(device):
                _emit(device, DEVICE_IFACE, {'ServicesResolved': dbus.Boolean(True, variant_level=1)})
            return False
        GLib.timeout_add(RESOLVE_MS, resolved)
        ok()
        return False
    GLib.timeout_add(CONNECT_MS, established)


def _drop_link(device):
    '''The connection is gone (asked for, or lost): services unresolved, notifications off, the UART reply lost.'''
    link = LINKS.get(device.path)
    if link is not None:
        link.stats['disconnects'] += int(_is_connected(device))
        link.close_sim()
        for path in (link.notify_path, link.extra_notify_path):
            if path is not None and bool(mockobject.objects[path].props[CHAR_IFACE]['Notifying']):
                _emit(mockobject.objects[path], CHAR_IFACE, {'Notifying': dbus.Boolean(False, variant_level=1)})
    if bool(device.props[DEVICE_IFACE]['ServicesResolved']):
        _emit(device, DEVICE_IFACE, {'ServicesResolved': dbus.Boolean(False, variant_level=1)})
    if _is_connected(device):
        _emit(device, DEVICE_IFACE, {'Connected': dbus.Boolean(False, variant_level=1)})


def _disconnect(device):
    # BlueZ answers Disconnect on a device that is not connected with success too (the stock mock raises).
    _drop_link(device)


@dbus.service.method(MOCK_IFACE, in_signature='sss', out_signature='s')
def AddDevice(self, adapter_device_name, device_address, alias):
    '''The stock device, with Connect and Disconnect that keep the Connected and ServicesResolved properties.

    The stock template only tracks the connection in a Python attribute; clients read the properties.
    '''
    path = base.AddDevice(self, adapter_device_name, device_address, alias)
    device = mockobject.objects[path]
    device.AddMethods(DEVICE_IFACE, [('Disconnect', '', '', _disconnect)])
    # Connect answers asynchronously, which dbusmock's AddMethod cannot express: its table entry points straight at
    # a dbus-python method with reply callbacks (dbusmock looks methods up in this table, by interface). Decorated
    # here, not at module level, where dbusmock would also make it a method of the mock's root object.
    connect = dbus.service.method(DEVICE_IFACE, in_signature='', out_signature='', async_callbacks=('ok', 'err'))
    device.methods[DEVICE_IFACE]['Connect'] = ('', '', None, connect(_connect))
    return path


def _device(path):
    device = mockobject.objects.get(path)
    if device is None or DEVICE_IFACE not in device.props:
        raise dbus.exceptions.DBusException(f'no device at {path}', name=MOCK_IFACE + '.NoSuchDevice')
    return device


def _link(path):
    link = LINKS.get(path)
    if link is None:
        raise dbus.exceptions.DBusException(f'no GATT bridge on {path}: call AddDalyA5Gatt or AddDalyModbusGatt',
                                            name=MOCK_IFACE + '.NoSuchDevice')
    return link


def _char_of(char):
    '''The device object path and Link of a characteristic object (paths: DEVICE/serviceXXXX/charYYYY).'''
    device_path = char.path.rsplit('/', 2)[0]
    return mockobject.objects[device_path], LINKS[device_path]


def _require_connected(device):
    if not _is_connected(device):
        raise dbus.exceptions.DBusException('Not connected', name='org.bluez.Error.Failed')


def _write_type(char, options):
    '''The ATT operation BlueZ would use: the client's `type` option, else a write request when allowed.'''
    flags = [str(f) for f in char.props[CHAR_IFACE]['Flags']]
    wanted = str(options.get('type', 'request' if 'write' in flags else 'command'))
    needed = {'command': 'write-without-response', 'request': 'write', 'reliable': 'reliable-write'}.get(wanted)
    if needed not in flags:
        raise dbus.exceptions.DBusException(f'write type {wanted!r} on a characteristic with flags {flags}',
                                            name='org.bluez.Error.NotSupported')
    return wanted


def _write_bridge(char, value, options):
    '''The write characteristic: a request for the BMS, carried to the simulator.'''
    device, link = _char_of(char)
    _require_connected(device)
    link.stats['write_types'].append(_write_type(char, options))
    link.stats['writes'] += 1
    if link.drop_after is not None and link.mode == 'normal':
        if link.drop_after == 0:
            link.drop_after = None
            link.mode = 'disconnect_next'
        else:
            link.drop_after -= 1
    if link.mode == 'disconnect_next':
        # The dongle goes away mid-poll: the write was accepted (write-without-response has no answer), then the
        # link drops. Once only; the client may connect again.
        link.mode = 'normal'
        link.stats['swallowed'] += 1
        def drop():
            _drop_link(device)
            return False
        GLib.idle_add(drop)
        return
    if link.mode == 'silent':
        link.stats['swallowed'] += 1
        return
    link.forward(bytes(value))


def _write_extra(char, value, options):
    '''The old modules' extra characteristic: clients write one empty value to it after subscribing.'''
    device, link = _char_of(char)
    _require_connected(device)
    _write_type(char, options)
    link.stats['extra_writes'].append(bytes(value).hex())


def _write_not_supported(char, _value, _options):
    raise dbus.exceptions.DBusException('Write not permitted', name='org.bluez.Error.NotPermitted')


def _read_value(char, _options):
    device, _link = _char_of(char)
    _require_connected(device)
    if 'read' not in [str(f) for f in char.props[CHAR_IFACE]['Flags']]:
        raise dbus.exceptions.DBusException('Read not permitted', name='org.bluez.Error.NotPermitted')
    # A plain byte array: the stored property carries a variant level, which the `ay` reply must not.
    return dbus.Array(list(char.props[CHAR_IFACE]['Value']), signature='y')


def _start_notify(char):
    device, _link = _char_of(char)
    _require_connected(device)
    flags = [str(f) for f in char.props[CHAR_IFACE]['Flags']]
    if 'notify' not in flags and 'indicate' not in flags:
        raise dbus.exceptions.DBusException('Operation is not supported', name='org.bluez.Error.NotSupported')
    if not bool(char.props[CHAR_IFACE]['Notifying']):
        _emit(char, CHAR_IFACE, {'Notifying': dbus.Boolean(True, variant_level=1)})
    # A second StartNotify from the same client is a no-op success in current BlueZ.


def _stop_notify(char):
    if bool(char.props[CHAR_IFACE]['Notifying']):
        _emit(char, CHAR_IFACE, {'Notifying': dbus.Boolean(False, variant_level=1)})


def _add_service(self, device_path, handle, uuid):
    path = f'{device_path}/service{handle:04x}'
    props = {
        'UUID': dbus.String(uuid, variant_level=1),
        'Primary': dbus.Boolean(True, variant_level=1),
        'Device': dbus.ObjectPath(device_path, variant_level=1),
        'Includes': dbus.Array([], signature='o', variant_level=1),
        'Handle': dbus.UInt16(handle, variant_level=1),
    }
    # GattService1 has no methods in BlueZ. Without one, dbusmock's introspection lists the interface after the
    # child <node>s, and bluez-async's XML parser (serde-xml-rs) then fails with "duplicate field `interface`"; a
    # method keeps the interface ahead of the nodes.
    self.AddObject(path, SERVICE_IFACE, props, [('MockNoop', '', '', '')])
    self.EmitSignal(OM_IFACE, 'InterfacesAdded', 'oa{sa{sv}}', [dbus.ObjectPath(path), {SERVICE_IFACE: props}])
    return path


def _add_char(self, service_path, handle, uuid, flags, write):
    path = f'{service_path}/char{handle:04x}'
    props = {
        'UUID': dbus.String(uuid, variant_level=1),
        'Service': dbus.ObjectPath(service_path, variant_level=1),
        'Value': dbus.Array([], signature='y', variant_level=1),
        'Notifying': dbus.Boolean(False, variant_level=1),
        'Flags': dbus.Array(flags, signature='s', variant_level=1),
        'Handle': dbus.UInt16(handle + 1, variant_level=1),
        'MTU': dbus.UInt16(ATT_MTU, variant_level=1),
    }
    self.AddObject(path, CHAR_IFACE, props, [
        ('ReadValue', 'a{sv}', 'ay', _read_value),
        ('WriteValue', 'aya{sv}', '', write),
        ('StartNotify', '', '', _start_notify),
        ('StopNotify', '', '', _stop_notify),
    ])
    self.EmitSignal(OM_IFACE, 'InterfacesAdded', 'oa{sa{sv}}', [dbus.ObjectPath(path), {CHAR_IFACE: props}])
    if 'notify' in flags:
        # The Client Characteristic Configuration descriptor every notifying characteristic has; BlueZ lists it,
        # and btleplug walks descriptors while discovering services.
        desc = f'{path}/desc{handle + 2:04x}'
        dprops = {
            'UUID': dbus.String(uuid16('2902'), variant_level=1),
            'Characteristic': dbus.ObjectPath(path, variant_level=1),
            'Value': dbus.Array([], signature='y', variant_level=1),
            'Handle': dbus.UInt16(handle + 2, variant_level=1),
        }
        self.AddObject(desc, DESC_IFACE, dprops, [
            ('ReadValue', 'a{sv}', 'ay', 'ret = dbus.Array([0, 0], signature="y")'),
            ('WriteValue', 'aya{sv}', '', ''),
        ])
        self.EmitSignal(OM_IFACE, 'InterfacesAdded', 'oa{sa{sv}}', [dbus.ObjectPath(desc), {DESC_IFACE: dprops}])
    return path


def _advertise(device_path, uuids):
    device = mockobject.objects[device_path]
    known = [str(u) for u in device.props[DEVICE_IFACE]['UUIDs']]
    _emit(device, DEVICE_IFACE, {'UUIDs': dbus.Array(known + [u for u in uuids if u not in known], signature='s',
                                                      variant_level=1)})


@dbus.service.method(MOCK_IFACE, in_signature='ssb', out_signature='s')
def AddDalyA5Gatt(self, device_path, sim_addr, extra_char):
    '''GATT of a UART dongle on an A5-protocol Daly board (HI-Link-B20 and clones); returns the service path.

    Service fff0: fff1 notify (BMS to host), fff2 write and write-without-response (host to BMS). With
    `extra_char`, the old modules' second service 02f00000-...-fe00 (the dongle chip's own) with characteristic
    02f00000-...-ff01, which Daly clients write one empty value to after subscribing; the writes are in
    GetDeviceStats' `extra_writes`. Handles are a HI-Link's (fff2 value 15, fff1 value 17, ff01 value 48);
    clients must look characteristics up by UUID, since other dongle generations number them differently.
    '''
    _device(device_path)
    if device_path in LINKS:
        raise dbus.exceptions.DBusException(f'{device_path} already has GATT', name=MOCK_IFACE + '.AlreadyExists')
    link = Link(device_path, 'daly-a5', sim_addr)
    service = _add_service(self, device_path, 0x000c, uuid16('fff0'))
    _add_char(self, service, 0x000e, uuid16('fff2'), ['write-without-response', 'write'], _write_bridge)
    link.notify_path = _add_char(self, service, 0x0010, uuid16('fff1'), ['notify'], _write_not_supported)
    uuids = [uuid16('fff0')]
    if extra_char:
        ota = _add_service(self, device_path, 0x0028, '02f00000-0000-0000-0000-00000000fe00')
        link.extra_notify_path = _add_char(self, ota, 0x0029, '02f00000-0000-0000-0000-00000000ff02',
                                           ['read', 'notify'], _write_not_supported)
        link.extra_path = _add_char(self, ota, 0x002f, '02f00000-0000-0000-0000-00000000ff01',
                                    ['write-without-response', 'write'], _write_extra)
        uuids.append('02f00000-0000-0000-0000-00000000fe00')
    LINKS[device_path] = link
    _advertise(device_path, uuids)
    return service


@dbus.service.method(MOCK_IFACE, in_signature='ss', out_signature='s')
def AddDalyModbusGatt(self, device_path, sim_addr):
    '''GATT of a newer Daly Bluetooth module (DL-/JHB- names) speaking the Modbus-style protocol; returns the
    service path. Service ff00: ff01 notify, ff02 write and write-without-response.'''
    _device(device_path)
    if device_path in LINKS:
        raise dbus.exceptions.DBusException(f'{device_path} already has GATT', name=MOCK_IFACE + '.AlreadyExists')
    link = Link(device_path, 'daly-modbus', sim_addr)
    service = _add_service(self, device_path, 0x0010, uuid16('ff00'))
    link.notify_path = _add_char(self, service, 0x0011, uuid16('ff01'), ['notify'], _write_not_supported)
    _add_char(self, service, 0x0014, uuid16('ff02'), ['write-without-response', 'write'], _write_bridge)
    LINKS[device_path] = link
    _advertise(device_path, [uuid16('ff00')])
    return service


@dbus.service.method(MOCK_IFACE, in_signature='ssu', out_signature='')
def SetSplit(_self, device_path, split, seed):
    '''How a reply becomes notifications: `mtu` (20-byte pieces, the default), `random` (1-5 cuts at random
    points, from `seed`) or `joined` (one notification, as with a large negotiated MTU).'''
    link = _link(device_path)
    if split not in SPLITS:
        raise dbus.exceptions.DBusException(f'split must be one of {SPLITS}', name=MOCK_IFACE + '.InvalidArguments')
    link.split = str(split)
    link.rng = random.Random(int(seed))


@dbus.service.method(MOCK_IFACE, in_signature='ss', out_signature='')
def SetDeviceMode(_self, device_path, mode):
    '''Faults: `garbage` (random 1-4 byte notifications between a reply's pieces, which breaks the frame they
    land in, and before a reply that fits one notification, which a parser must skip), `silent` (writes accepted,
    never answered), `disconnect_next` (the next write drops the connection; Connect works again afterwards),
    `unreachable` (drops the connection now and refuses Connect) and `normal`.'''
    link = _link(device_path)
    if mode not in MODES:
        raise dbus.exceptions.DBusException(f'mode must be one of {MODES}', name=MOCK_IFACE + '.InvalidArguments')
    link.mode = str(mode)
    if mode == 'unreachable':
        _drop_link(_device(device_path))


@dbus.service.method(MOCK_IFACE, in_signature='s', out_signature='s')
def GetDeviceStats(_self, device_path):
    '''Counters since the GATT was added, as JSON: connects, disconnects, writes (to the write characteristic),
    forwarded (to the simulator), swallowed (silent or disconnect_next), replies, notifications (reply pieces),
    garbage_notifications, unheard (pieces dropped because the client was not subscribed), sim_connections,
    sim_errors, write_types (BlueZ's `type` per write: command = without response) and extra_writes (hex of each
    write to the extra characteristic); plus kind, split, mode and the subscription state.'''
    link = _link(device_path)
    stats = dict(link.stats, kind=link.kind, split=link.split, mode=link.mode,
                 notifying=bool(mockobject.objects[link.notify_path].props[CHAR_IFACE]['Notifying']),
                 connected=_is_connected(_device(device_path)))
    return json.dumps(stats)


@dbus.service.method(MOCK_IFACE, in_signature='s', out_signature='s')
def GetAdapterStats(_self, adapter_path):
    '''Counters of the adapter at `adapter_path`, as JSON: refused_in_progress (Connect calls refused because another
    device's Connect was pending on this adapter).'''
    if adapter_path not in mockobject.objects:
        raise dbus.exceptions.DBusException(f'no adapter at {adapter_path}', name=MOCK_IFACE + '.NoSuchAdapter')
    return json.dumps({'refused_in_progress': REFUSED_IN_PROGRESS.get(adapter_path, 0)})


@dbus.service.method(MOCK_IFACE, in_signature='sn', out_signature='')
def SetDeviceRssi(_self, device_path, rssi):
    '''The signal strength BlueZ reports for the device (the stock template gives every device -79 dBm).'''
    _emit(_device(device_path), DEVICE_IFACE, {'RSSI': dbus.Int16(rssi, variant_level=1)})


@dbus.service.method(MOCK_IFACE, in_signature='su', out_signature='')
def DisconnectAfter(_self, device_path, writes):
    '''The dongle answers `writes` more writes, then goes away at the next one as in `disconnect_next` (that write
    swallowed, the connection dropped, once): a drop in the middle of a poll rather than at its first request.'''
    _link(device_path).drop_after = int(writes)
