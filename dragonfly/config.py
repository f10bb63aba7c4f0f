"""Configuration: sizes, rates, host lists, and TOML files under usage.Options.

A flag on the command line beats the TOML file given by ``--config``; the file
beats the built-in default.
"""
import functools
import os
import tomllib

from twisted.python import usage

from dragonfly import units

def _usage_errors(parse):
    """C{parse}, raising L{usage.UsageError} (what twistd reports) for a bad value."""
    @functools.wraps(parse)
    def wrapper(*args, **kw):
        try:
            return parse(*args, **kw)
        except units.BadValue as e:
            raise usage.UsageError(str(e)) from None
    return wrapper


parse_size = _usage_errors(units.parse_size)
parse_rate = _usage_errors(units.parse_rate)
parse_hostport = _usage_errors(units.parse_hostport)
parse_hostports = _usage_errors(units.parse_hostports)


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


def _norm(name):
    return name.replace("-", "_")


class _RecordingCoerce(usage.CoerceParameter):
    """A CoerceParameter that notes that its option was given on the command line."""

    def __init__(self, inner, given):
        usage.CoerceParameter.__init__(self, inner.options, inner.coerce)
        self.doc = inner.doc
        self.inner = inner
        self._given = given

    def dispatch(self, parameterName, value):
        self.inner.dispatch(parameterName, value)
        self._given.add(_norm(parameterName))


class ConfigOptions(usage.Options):
    """usage.Options that also reads a TOML file.

    Subclasses list ``optParameters``/``optFlags`` as usual and set ``role``.
    Keys in the file use the long flag name with ``-`` or ``_``; a value from
    the file goes through the parameter's coerce function like a flag would,
    a list value for a parameter is joined with ``,`` (so
    ``supernodes = ["a:1", "b:2"]`` works), flags take booleans.

    ``listOptions`` names repeatable flags (``--allow-registry A
    --allow-registry B``); their values are collected into a list stored under
    the name with ``_`` (``self["allow_registry"]``). A subclass may define its
    own ``opt_<name>`` for one; otherwise one that appends is provided. The
    file gives them as a string or a list of strings.

    In ``postOptions`` call ``self.applyConfig()`` first; then validate.
    """

    role = "dragonfly"
    listOptions = ()  # flags that may repeat: collected into lists

    _notFromFile = frozenset({"config", "help", "version"})

    def __init__(self):
        self._given = set()
        usage.Options.__init__(self)
        self["config"] = None
        for name in self.listOptions:
            key = _norm(name)
            self[key] = []
            long = name.replace("_", "-")
            if long not in self._dispatch:
                self._addListOption(long, key)
        self._handlers = dict(self._dispatch)
        for long, handler in list(self._dispatch.items()):
            if long == "config":
                continue
            if isinstance(handler, usage.CoerceParameter):
                self._dispatch[long] = _RecordingCoerce(handler, self._given)
            else:
                self._dispatch[long] = self._recording(long, handler)

    def _addListOption(self, long, key):
        def append(name, value):
            if value is None:
                raise usage.UsageError(f"--{long} requires an argument")
            self[key].append(value)

        self.longOpt.append(long + "=")
        self.synonyms[long] = long
        self.synonyms[key] = long
        self.docs.setdefault(long, f"(repeatable) {long.replace('-', ' ')}")
        self._dispatch[long] = append

    def _recording(self, long, handler):
        given = self._given

        def wrapped(name, value=None):
            result = handler(name, value)
            given.add(_norm(long))
            return result

        return wrapped

    def opt_config(self, path):
        """TOML file of settings (default /etc/dragonfly/<role>.toml if it exists)."""
        self["config"] = path

    def wasGiven(self, name):
        """True if option C{name} appeared on the command line."""
        return _norm(name) in self._given

    def applyConfig(self):
        path = self["config"]
        if path is None:
            default = f"/etc/dragonfly/{self.role}.toml"
            path = default if os.path.exists(default) else None
        if path is None:
            return
        data = load_toml(path)
        self.applyMapping(data, source=path)

    def _known(self):
        """normalized name -> (kind, key in self or handler)."""
        known = {}
        for long, handler in self._handlers.items():
            n = _norm(long)
            if n in self._notFromFile:
                continue
            if isinstance(handler, usage.CoerceParameter):
                known[n] = ("param", long, handler.coerce)
            elif getattr(handler, "__func__", None) is usage.Options._generic_flag:
                known[n] = ("flag", long, None)
            elif f"{long}=" in self.longOpt:
                known[n] = ("handler", long, handler)
            else:
                known[n] = ("switch", long, handler)
        for name in self.listOptions:
            known[_norm(name)] = ("list", _norm(name), None)
        return known

    def applyMapping(self, data, source="config"):
        """Apply settings from C{data} (a dict, e.g. parsed TOML) unless the
        command line already gave them. Unknown keys raise UsageError."""
        if not isinstance(data, dict):
            raise usage.UsageError(f"{source}: settings must be a table")
        known = self._known()
        for key, value in data.items():
            k = _norm(key)
            if k not in known:
                raise usage.UsageError(f"{source}: unknown setting {key!r}")
            if k in self._given:
                continue
            kind, target, extra = known[k]
            if kind == "list":
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, list) or not all(
                        isinstance(v, (str, int, float)) and not isinstance(v, bool)
                        for v in value):
                    raise usage.UsageError(f"{source}: {key} must be a list of strings")
                self[target] = [str(v) for v in value]
            elif kind in ("flag", "switch"):
                if not isinstance(value, bool):
                    raise usage.UsageError(f"{source}: {key} must be true or false")
                if kind == "flag":
                    self[target] = 1 if value else 0
                elif value:
                    extra(target, None)
            else:
                text = self._scalar(value, key, source)
                if kind == "param":
                    try:
                        self[target] = extra(text)
                    except ValueError as e:
                        raise usage.UsageError(f"{source}: bad value for {key}: {e}")
                else:
                    try:
                        extra(target, text)
                    except ValueError as e:
                        raise usage.UsageError(f"{source}: bad value for {key}: {e}")

    @staticmethod
    def _scalar(value, key, source):
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return str(value)
        if isinstance(value, list) and all(
                isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            return ",".join(str(v) for v in value)
        raise usage.UsageError(f"{source}: {key} must be a string, number or list")


def check_endpoint(flag, value, example="tcp:8002"):
    """Raise UsageError unless C{value} is a server endpoint string (not bound here)."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    if not isinstance(value, str) or not value.strip():
        raise usage.UsageError(f"--{flag} must be an endpoint like {example}")
    try:
        serverFromString(MemoryReactor(), value)
    except Exception as e:
        raise usage.UsageError(f"--{flag}: bad endpoint {value!r}: {e}")


def check_writable_dir(flag, path):
    """The dir exists and is writable, or its closest existing parent is."""
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise usage.UsageError(f"--{flag}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise usage.UsageError(f"--{flag}: {probe} is not writable")
