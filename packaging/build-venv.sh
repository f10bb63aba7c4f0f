#!/bin/sh
# Build dragonfly's runtime virtualenv for a package: PREFIX (the path it will
# have once installed, e.g. /opt/dragonfly) is built under DESTDIR (the package
# build root), then every trace of DESTDIR is rewritten out of it. Shared by
# debian/rules and rpm/dragonfly.spec; run from the source tree's root.
#
#     PYTHON=/usr/bin/python3.11 sh packaging/build-venv.sh DESTDIR PREFIX
#
# An empty DESTDIR builds in place (e.g. a container image: "" /opt/dragonfly).
#
# PYTHON is the interpreter the venv is tied to (its bin/python links to it, so
# the package must depend on exactly that interpreter). Dependencies come from
# packaging/requirements.lock only, checked against its hashes; dragonfly itself
# is built from this tree without build isolation (setuptools is in the lock).
# DRAGONFLY_PIP_ARGS adds pip options, e.g. an offline wheelhouse:
#     DRAGONFLY_PIP_ARGS="--no-index --find-links=/srv/wheelhouse"
set -eu
DESTDIR=${1?usage: build-venv.sh DESTDIR PREFIX}
PREFIX=${2:?usage: build-venv.sh DESTDIR PREFIX}
PYTHON=${PYTHON:-/usr/bin/python3}
VENV=$DESTDIR$PREFIX
PIP="$VENV/bin/python -m pip --no-cache-dir --disable-pip-version-check --no-input"

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# shellcheck disable=SC2086  # DRAGONFLY_PIP_ARGS is a list of options
$PIP install -q --require-hashes --no-deps ${DRAGONFLY_PIP_ARGS:-} -r packaging/requirements.lock
$PIP install -q --no-deps --no-build-isolation --no-index .
rm -rf build ./*.egg-info
# Build tools have no place in the runtime.
$PIP uninstall -q -y setuptools pip

site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
# pip records where dragonfly was installed from (this build directory).
for record in "$site"/dragonfly_p2p-*.dist-info/RECORD; do
    rm -f "$(dirname "$record")/direct_url.json"
    sed -i '/direct_url.json/d' "$record"
done

# twistd finds the supernode/peer/dfdaemon plugins through this cache: write it
# now, so the daemons (which cannot write to PREFIX) never need to.
"$VENV/bin/python" -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

# Bytecode is shipped, compiled here (hash-checked: valid whatever the file
# times after unpacking), so nothing run as root later writes files that no
# package owns; tracebacks name PREFIX, not DESTDIR.
find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
"$VENV/bin/python" -m compileall -q -j 0 --invalidation-mode checked-hash \
    ${DESTDIR:+-s "$DESTDIR" -p /} "$VENV/lib" >/dev/null
[ -n "$DESTDIR" ] || exit 0

# The venv was made under DESTDIR: its scripts' #! lines, activate scripts and
# pyvenv.cfg name DESTDIR$PREFIX. Point them at PREFIX.
grep -rlI --null -F "$DESTDIR" "$VENV" | xargs -0 -r sed -i "s|$DESTDIR||g"
if grep -rlI -F "$DESTDIR" "$VENV"; then
    echo "build-venv.sh: $DESTDIR still named in the files above" >&2
    exit 1
fi
