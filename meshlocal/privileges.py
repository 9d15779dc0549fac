"""Host mode: the data plane stops being root before it listens on anything.

It is started by the root controller, imports what it needs, then becomes
`nobody` keeping one capability, CAP_NET_BIND_SERVICE (port 53 on the
gateway, an endpoint on port 80), with no_new_privs set: nothing it runs
later can gain privileges back. The Service Connect addresses are put on
the bridge by the controller, so the data plane needs no CAP_NET_ADMIN.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct

from meshlocal.errors import DataPlaneError

NOBODY = 65534
CAP_NET_BIND_SERVICE = 10
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522
_LAST_CAP = 63


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def drop_to_nobody(uid: int = NOBODY, gid: int = NOBODY) -> None:
    """Become `uid` with only CAP_NET_BIND_SERVICE, and no way back. Root only."""
    if os.geteuid() != 0:
        return  # not root: nothing to drop (a developer's unprivileged test run)
    libc = _libc()

    def prctl(option: int, arg: int = 0) -> None:
        if libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if option == _PR_CAPBSET_DROP and err == 22:  # EINVAL: past the kernel's last cap
                return
            raise DataPlaneError(f"prctl({option}) failed: {os.strerror(err)}")

    for cap in range(_LAST_CAP + 1):
        if cap != CAP_NET_BIND_SERVICE:
            prctl(_PR_CAPBSET_DROP, cap)
    prctl(_PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    header = _Header(_CAP_VERSION_3, 0)
    data = (_Data * 2)()
    bit = 1 << CAP_NET_BIND_SERVICE
    data[0].effective = data[0].permitted = bit
    if libc.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        raise DataPlaneError(f"capset failed: {os.strerror(ctypes.get_errno())}")
    prctl(_PR_SET_KEEPCAPS, 0)
    prctl(_PR_SET_NO_NEW_PRIVS, 1)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
