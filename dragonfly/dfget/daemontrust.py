"""Which file of the daemon's dfget may take: trust in the daemon, kept small.

Standard library only (see L{dragonfly.dfget.options}). The daemon answers
a download with the path of its copy; dfget links, reflinks or copies that
file into the output. Whatever listens on the daemon's port first could name
any file (a root dfget would copy C{/etc/shadow}), so dfget takes the file
only when:

  - the process behind the connection is known: its uid is the owner of the
    daemon's end of our TCP connection, read from C{/proc/net/tcp} and
    C{tcp6}, or the peer credentials of the daemon's unix socket
    (C{--daemon-socket}) (L{connection_uid}; Linux, loopback daemons only);
  - the daemon named its data directory (C{"data_dir"} in the done line),
    that directory is owned by that uid, and the file's real path lies
    inside it (L{trusted_file});
  - the file is a regular file owned by that uid.

In every other case dfget streams the bytes from the daemon's
C{/api/v1/tasks/<id>/data} instead: a lying daemon can then hand out only
bytes it could send anyway.
"""
import ipaddress
import os
import socket
import stat
import struct

__all__ = ["connection_uid", "trusted_file", "parse_proc_net"]

_PROC_NET = ("/proc/net/tcp", "/proc/net/tcp6")
_ESTABLISHED = "01"


def _address(field):
    """'0100007F:1F90' (as /proc/net/tcp writes it) -> (ip_address, port)."""
    host, _, port = field.partition(":")
    raw = bytes.fromhex(host)
    # Each 32-bit word is in the host's byte order.
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    packed = b"".join(struct.pack(">I", w) for w in words)
    ip = ipaddress.ip_address(packed)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, int(port, 16)


def parse_proc_net(text, ports=None):
    """The rows of a C{/proc/net/tcp}-style table: [(local, remote, state, uid)].

    C{ports}: (local port, remote port) of the one connection wanted: only
    established rows with those two ports are parsed further (the table lists
    every socket of the host, ~600 here, and parsing each row's addresses cost
    dfget ~8 ms of CPU per call: bench/README.md, issue 20 round six); the
    caller still compares the addresses of what is returned.
    """
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            if ports is not None and (
                    fields[3] != _ESTABLISHED
                    or int(fields[1].rpartition(":")[2], 16) != ports[0]
                    or int(fields[2].rpartition(":")[2], 16) != ports[1]):
                continue
            rows.append((_address(fields[1]), _address(fields[2]), fields[3], int(fields[7])))
        except ValueError:
            continue
    return rows


def _normal(sockaddr):
    ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, sockaddr[1]


def connection_uid(sock, tables=_PROC_NET):
    """The uid owning the far end of the loopback TCP connection C{sock} (or
    of the unix socket C{sock}: its peer credentials), or None (not loopback,
    not Linux, not found)."""
    if getattr(sock, "family", None) == getattr(socket, "AF_UNIX", object()):
        return _peer_uid(sock)
    try:
        here, there = _normal(sock.getsockname()), _normal(sock.getpeername())
    except (OSError, ValueError, IndexError, TypeError, AttributeError):
        return None
    if not there[0].is_loopback:
        return None
    for path in tables:
        try:
            with open(path) as f:
                rows = parse_proc_net(f.read(), ports=(there[1], here[1]))
        except OSError:
            continue
        for local, remote, state, uid in rows:
            if state == _ESTABLISHED and local == there and remote == here:
                return uid
    return None


def _peer_uid(sock):
    """The uid of the process at the other end of unix socket C{sock}
    (C{SO_PEERCRED}: the kernel's word, Linux), or None."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, _gid = struct.unpack("3i", creds)
    return uid if pid > 0 and uid >= 0 else None   # unconnected: pid 0, uid -1


def _inside(path, directory):
    return path.startswith(directory.rstrip(os.sep) + os.sep)


def trusted_file(path, data_dir, uid):
    """(real path, None) if dfget may read C{path} as the copy of the daemon
    running as C{uid} with data directory C{data_dir}, else (None, why)."""
    if uid is None:
        return None, "cannot tell which user runs the daemon"
    if not isinstance(data_dir, str) or not os.path.isabs(data_dir):
        return None, "the daemon did not name its data directory"
    if not isinstance(path, str) or not os.path.isabs(path):
        return None, "the daemon named no absolute path"
    real_dir = os.path.realpath(data_dir)
    real = os.path.realpath(path)
    if not _inside(real, real_dir):
        return None, f"{path} is not inside the daemon's data directory"
    try:
        dir_st = os.stat(real_dir)
        st = os.stat(real, follow_symlinks=False)
    except OSError as e:
        return None, f"cannot stat {path}: {e.strerror or e}"
    if dir_st.st_uid != uid:
        return None, f"{data_dir} is not owned by the daemon's user"
    if not stat.S_ISREG(st.st_mode):
        return None, f"{path} is not a regular file"
    if st.st_uid != uid:
        return None, f"{path} is not owned by the daemon's user"
    return real, None
