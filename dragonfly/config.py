"""Configuration: sizes, rates, host lists, and TOML files under usage.Options.

A flag on the command line beats the TOML file given by ``--config``; the file
beats the built-in default.
"""
import os
import re
import tomllib

from twisted.python import usage

_SIZE_RE = re.compile(r"\A\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value):
    """'4M' -> 4194304. K/M/G/T are powers of 1024; a plain integer is bytes."""
    if isinstance(value, bool):
        raise usage.UsageError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise usage.UsageError(f"size must not be negative: {value}")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise usage.UsageError(f"not a size: {value!r} (use e.g. 4M, 512K, 1G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def parse_rate(value):
    """Bytes per second with K/M/G suffixes; 0 means unlimited."""
    return parse_size(value)


def parse_hostport(value, default_port=None):
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            host, port = value, ""
    if not port:
        if default_port is None:
            raise usage.UsageError(f"missing port in {value!r} (want HOST:PORT)")
        port = default_port
    try:
        port = int(port)
    except ValueError:
        raise usage.UsageError(f"bad port in {value!r}")
    if not host or not 0 < port < 65536:
        raise usage.UsageError(f"bad address {value!r} (want HOST:PORT)")
    return host, port


def parse_hostports(value, default_port=None):
    """'a:1,b:2' -> [('a', 1), ('b', 2)]."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [v for v in str(value).split(",") if v.strip()]
    return [parse_hostport(v, default_port) for v in items]


def load_toml(path):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise usage.UsageError(f"cannot read config {path}: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"bad TOML in {path}: {e}")


def from_string(text):
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"bad TOML: {e}")


class ConfigOptions(usage.Options):
    """usage.Options that also reads a TOML file.

    Subclasses list ``optParameters`` as usual and set ``role``. Keys in the
    file use the long flag name with ``-`` or ``_``. In ``postOptions`` call
    ``self.applyConfig()`` first; then validate.
    """

    role = "dragonfly"
    listOptions = ()  # flags that may repeat: collected into lists

    def __init__(self):
        usage.Options.__init__(self)
        self._given = set()
        self["config"] = None
        for name in self.listOptions:
            self[name.replace("-", "_")] = []

    def opt_config(self, path):
        """TOML file of settings (default /etc/dragonfly/<role>.toml if it exists)."""
        self["config"] = path

    def __getattribute__(self, name):
        # Record which flags appear on the command line, so the file never beats them.
        if name.startswith("opt_") and name != "opt_config":
            attr = object.__getattribute__(self, name)
            given = object.__getattribute__(self, "_given")
            flag = name[4:]

            def wrapped(*args):
                given.add(flag.replace("-", "_"))
                return attr(*args)

            wrapped.__doc__ = attr.__doc__
            return wrapped
        return object.__getattribute__(self, name)

    def applyConfig(self):
        path = self["config"]
        if path is None:
            default = f"/etc/dragonfly/{self.role}.toml"
            path = default if os.path.exists(default) else None
        if path is None:
            return
        data = load_toml(path)
        self.applyMapping(data, source=path)

    def applyMapping(self, data, source="config"):
        known = {p[0].replace("-", "_") for p in self.optParameters}
        known |= {f[0].replace("-", "_") for f in getattr(self, "optFlags", [])}
        known |= {n.replace("-", "_") for n in self.listOptions}
        for key, value in data.items():
            k = key.replace("-", "_")
            if k not in known:
                raise usage.UsageError(f"{source}: unknown setting {key!r}")
            if k in self._given:
                continue
            if k in {n.replace("-", "_") for n in self.listOptions}:
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, list):
                    raise usage.UsageError(f"{source}: {key} must be a list")
                self[k] = [str(v) for v in value]
            elif isinstance(value, bool):
                self[k] = value
            else:
                self[k] = value if isinstance(value, str) else str(value)
