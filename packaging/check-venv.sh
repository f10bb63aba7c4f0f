#!/bin/sh
# Check a runtime virtualenv built by build-venv.sh, still under its build
# root (the package's test step: dh_auto_test, the RPM's %check). VENV is where
# it lies now, PREFIX where it will be installed; its scripts already point at
# PREFIX, so everything here runs through VENV's python with -m.
#
#     sh packaging/check-venv.sh DESTDIR/opt/dragonfly /opt/dragonfly
set -eu
VENV=${1:?usage: check-venv.sh VENV PREFIX}
PREFIX=${2:?usage: check-venv.sh VENV PREFIX}
PY=$VENV/bin/python
[ -x "$PY" ] || { echo "check-venv.sh: no $PY" >&2; exit 1; }
fail() { echo "check-venv.sh: $*" >&2; exit 1; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT INT TERM
touch "$scratch/started"

# Relocated: every script starts with PREFIX's python, pyvenv.cfg names no build root.
for script in "$VENV"/bin/*; do
    [ -L "$script" ] && continue
    case $(head -c 2 "$script") in '#!') ;; *) continue ;; esac
    [ "$(head -n 1 "$script")" = "#!$PREFIX/bin/python" ] || fail "$script: $(head -n 1 "$script")"
done
[ "$VENV" = "$PREFIX" ] || ! grep -q -F "$VENV" "$VENV/pyvenv.cfg" || fail "pyvenv.cfg names $VENV"

# The commands: python -m dragonfly, the console scripts' entry points, twistd's plugins.
"$PY" -m dragonfly >/dev/null || fail "python -m dragonfly failed"
"$PY" - <<'PYEOF' || fail "console scripts"
from importlib.metadata import entry_points
names = {e.name: e for e in entry_points(group="console_scripts")}
for name in ("dfget", "dfctl", "dragonfly-pki"):
    assert callable(names[name].load()), name
PYEOF
twistd_help=$("$PY" -c "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()" --help)
for role in supernode peer dfdaemon; do
    echo "$twistd_help" | grep -q "^ *$role " || fail "twistd --help does not list $role"
    "$PY" -c "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()" \
        "$role" --help >/dev/null || fail "twistd $role --help failed"
done

# A few unit modules of the installed package (those without the test extra's
# hypothesis), from a scratch directory so the source tree is not imported.
(cd "$scratch" && "$PY" -m twisted.trial --temp-directory="$scratch/_trial_temp" \
    dragonfly.test.test_supernode_tap dragonfly.test.test_peer_tap \
    dragonfly.test.test_dfdaemon_tap dragonfly.test.test_storage_store \
    dragonfly.test.test_protocol_server dragonfly.test.test_config) >"$scratch/trial.log" 2>&1 \
    || { cat "$scratch/trial.log" >&2; fail "unit tests failed"; }
tail -n 1 "$scratch/trial.log"
# Nothing above may have left bytecode that the package would not own.
stray=$(find "$VENV" -name '*.pyc' -newer "$scratch/started" | head -n 5)
[ -z "$stray" ] || fail "bytecode written at check time: $stray"
echo "check-venv.sh: $VENV ok"
