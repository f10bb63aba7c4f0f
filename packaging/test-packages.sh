#!/bin/bash
# make package-test: the packages as an operator meets them, on this machine.
#
#  1. builds the .debs (dpkg-buildpackage) from a clean copy of the tree
#     (the files git knows, as they are in the work tree);
#  2. installs them with apt-get, starts each role with its SysV script, waits
#     for /healthz, downloads a file from a local origin through the installed
#     dfget and peer and compares it; then the dfdaemon in the peer's place;
#  3. removes the packages (no dragonfly process may be left, no file in
#     /opt/dragonfly) and purges them (nothing left in /opt/dragonfly,
#     /etc/dragonfly, /var/lib/dragonfly, /run/dragonfly, /var/log/dragonfly,
#     no dragonfly user);
#  4. builds the RPMs with `rpmbuild -bb --nodeps`, %check included.
#
# Needs root, apt-get, dpkg-buildpackage/debhelper, rpmbuild (Debian's rpm),
# python3-venv and PyPI. The roles use their default ports (8001, 8002, 65000,
# 65001, 65002): they must be free. It refuses to run where dragonfly is
# installed, and on any exit puts the machine back as it found it: daemons
# stopped, packages purged, /usr/sbin/policy-rc.d restored (it is moved aside
# while the test runs: Docker images ship one that forbids every start and stop).
# Each step fails the run on error; the log of a failed build or daemon is shown.
set -euo pipefail
# needrestart (if installed) would scan every process of the machine after each apt-get.
export NEEDRESTART_SUSPEND=1 DEBIAN_FRONTEND=noninteractive

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/dragonfly-package-test.XXXXXX)
PACKAGES="dragonfly dragonfly-supernode dragonfly-peer dragonfly-dfdaemon"
ROLES="supernode peer dfdaemon"
POLICY=/usr/sbin/policy-rc.d
ORIGIN_PID=""
T0=$(date +%s)

step() { echo "== [$(($(date +%s) - T0))s] $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# (Outputs are captured before grep -q: with pipefail, a grep that stops early fails the pipe.)
installed() { local st; st=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
              grep -q "ok installed\|config-files" <<<"$st"; }

cleanup() {
    local rc=$?
    set +e
    if [ $rc -ne 0 ]; then
        for f in /var/log/dragonfly/*.log; do
            [ -f "$f" ] && { echo "--- $f (last lines)"; tail -n 20 "$f"; }
        done
    fi
    for role in $ROLES; do
        [ -x /etc/init.d/dragonfly-$role ] && /etc/init.d/dragonfly-$role stop >/dev/null 2>&1
    done
    [ -n "$ORIGIN_PID" ] && kill "$ORIGIN_PID" 2>/dev/null && wait "$ORIGIN_PID" 2>/dev/null
    rm -f /etc/default/dragonfly-supernode /etc/default/dragonfly-peer /etc/default/dragonfly-dfdaemon
    local left=""
    for p in $PACKAGES; do installed "$p" && left="$left $p"; done
    # shellcheck disable=SC2086
    [ -n "$left" ] && DEBIAN_FRONTEND=noninteractive dpkg --purge $left >/dev/null 2>&1
    [ -e "$WORK/policy-rc.d" ] && mv "$WORK/policy-rc.d" "$POLICY"
    rm -rf "$WORK"
    [ $rc -eq 0 ] && echo "== package-test passed in $(($(date +%s) - T0))s" \
        || echo "== package-test FAILED (exit $rc) after $(($(date +%s) - T0))s" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Poll URL until it answers 200, for up to $2 seconds.
wait_http() {
    python3 - "$1" "${2:-30}" <<'EOF'
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
err = None
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError as e:
        err = e
    if time.monotonic() > deadline:
        sys.exit(f"{url}: no answer ({err})")
    time.sleep(0.2)
EOF
}

# No process of the dragonfly user, no twistd of /opt/dragonfly, for up to $1 seconds.
assert_no_process() {
    local i=0
    while pgrep -u dragonfly >/dev/null 2>&1 || pgrep -f /opt/dragonfly/bin/ >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -gt $((${1:-10} * 10)) ]; then
            ps -o pid,user,args -p "$(pgrep -d, -f /opt/dragonfly/bin/ || echo 1)" >&2
            fail "dragonfly processes left after $2"
        fi
        sleep 0.1
    done
}

# --- preconditions ----------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "run as root (it installs packages)"
for tool in apt-get dpkg-buildpackage dh rpmbuild python3 git; do
    command -v $tool >/dev/null || fail "$tool missing (apt-get install debhelper rpm python3-venv git)"
done
for p in $PACKAGES; do
    installed "$p" && fail "$p is installed here: this test installs and purges its own"
done
[ -e /opt/dragonfly ] && fail "/opt/dragonfly exists: not touching it"
getent passwd dragonfly >/dev/null && fail "a dragonfly user exists: not touching it"
python3 - <<'EOF' || fail "a default port of the roles is taken"
import socket
for port in (8001, 8002, 65000, 65001, 65002):
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", port))
    except OSError:
        raise SystemExit(f"port {port} is taken")
    finally:
        s.close()
EOF

# --- 1. build the .debs from a clean tree -----------------------------------
step "clean tree in $WORK/src"
mkdir -p "$WORK/src"
(cd "$ROOT" && git ls-files --cached --others --exclude-standard -z \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -cf - -T -) | tar -xf - -C "$WORK/src"
mkdir -p "$WORK/rpmbuild/SOURCES"
tar -C "$WORK/src" --transform 's,^\.,dragonfly-0.1.0,' \
    -czf "$WORK/rpmbuild/SOURCES/dragonfly-0.1.0.tar.gz" .
cp -r "$WORK/src/packaging/debian" "$WORK/src/debian"
step "dpkg-buildpackage"
# gzip -1: this test is about what the packages do, not their size.
(cd "$WORK/src" && DPKG_DEB_COMPRESSOR_TYPE=gzip DPKG_DEB_COMPRESSOR_LEVEL=1 \
    dpkg-buildpackage -us -uc -b) >"$WORK/deb-build.log" 2>&1 \
    || { tail -n 40 "$WORK/deb-build.log"; fail "dpkg-buildpackage"; }
grep "^PASSED\|check-venv.sh: .* ok" "$WORK/deb-build.log"
ls "$WORK"/*.deb

# --- 2. install, start, download --------------------------------------------
if [ -e "$POLICY" ]; then mv "$POLICY" "$WORK/policy-rc.d"; fi
step "apt-get install"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "$WORK"/dragonfly_*.deb "$WORK"/dragonfly-supernode_*.deb \
    "$WORK"/dragonfly-peer_*.deb "$WORK"/dragonfly-dfdaemon_*.deb >"$WORK/install.log" 2>&1 \
    || { tail -n 30 "$WORK/install.log"; fail "apt-get install"; }
dpkg-query -W -f='${Package} ${Version} ${Status}\n' $PACKAGES
grep -q "python3\.[0-9]" <<<"$(dpkg-query -W -f='${Depends}' dragonfly)" \
    || fail "dragonfly does not depend on its interpreter"
for f in /usr/bin/dfget /usr/bin/dfctl /etc/logrotate.d/dragonfly \
         /usr/share/bash-completion/completions/dfget /usr/share/bash-completion/completions/dfctl \
         /usr/share/man/man1/dfget.1.gz /usr/share/man/man8/dragonfly-supernode.8.gz \
         /usr/share/man/man8/dragonfly-peer.8.gz /usr/share/man/man8/dragonfly-dfdaemon.8.gz; do
    [ -e "$f" ] || fail "$f not installed"
done
/opt/dragonfly/bin/python -m dragonfly >/dev/null || fail "python -m dragonfly"
# Boot links: supernode and peer start at boot, the dfdaemon does not.
ls /etc/rc2.d/S*dragonfly-supernode /etc/rc2.d/S*dragonfly-peer >/dev/null \
    || fail "supernode/peer not enabled at boot"
if ls /etc/rc2.d/S*dragonfly-dfdaemon >/dev/null 2>&1; then fail "dfdaemon enabled at boot"; fi
if /etc/init.d/dragonfly-dfdaemon status >/dev/null; then fail "dfdaemon started on install"; fi
if command -v logrotate >/dev/null; then
    logrotate -d /etc/logrotate.d/dragonfly >"$WORK/logrotate.log" 2>&1 \
        || { cat "$WORK/logrotate.log"; fail "logrotate config"; }
fi

step "local origin"
mkdir -p "$WORK/origin" "$WORK/out"
head -c $((24 * 1024 * 1024 + 12345)) /dev/urandom >"$WORK/origin/blob.bin"
ORIGIN_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$ORIGIN_PORT" --bind 127.0.0.1 --directory "$WORK/origin" \
    >"$WORK/origin.log" 2>&1 &
ORIGIN_PID=$!
wait_http "http://127.0.0.1:$ORIGIN_PORT/" 10
for role in $ROLES; do
    echo "DRAGONFLY_ARGS=\"--allow-origin 127.0.0.1:$ORIGIN_PORT\"" >/etc/default/dragonfly-$role
done

step "start supernode and peer with their SysV scripts"
/etc/init.d/dragonfly-supernode start
/etc/init.d/dragonfly-peer start
wait_http http://127.0.0.1:8002/healthz 30
wait_http http://127.0.0.1:65002/healthz 30
/etc/init.d/dragonfly-supernode status
/etc/init.d/dragonfly-peer status
[ "$(stat -c %U /run/dragonfly/peer.pid)" = dragonfly ] || fail "peer not run as dragonfly"
# umask 0027 under twistd's daemon mode too: the group may read the log.
[ "$(stat -c %a /var/log/dragonfly/peer.log)" = 640 ] \
    || fail "peer.log mode $(stat -c %a /var/log/dragonfly/peer.log), not 640"

step "dfget through the peer"
(cd "$WORK/out" && /usr/bin/dfget "http://127.0.0.1:$ORIGIN_PORT/blob.bin" -O blob.bin)
cmp "$WORK/origin/blob.bin" "$WORK/out/blob.bin" || fail "downloaded file differs"
/usr/bin/dfctl task ls --json >"$WORK/tasks.json"
grep -q "blob.bin" "$WORK/tasks.json" || { cat "$WORK/tasks.json"; fail "the peer has no task for the file"; }

step "the peer's package removed: it stops"
peer_pid=$(cat /run/dragonfly/peer.pid)
DEBIAN_FRONTEND=noninteractive apt-get remove -y -q dragonfly-peer >"$WORK/remove.log" 2>&1 \
    || { cat "$WORK/remove.log"; fail "apt-get remove dragonfly-peer"; }
if kill -0 "$peer_pid" 2>/dev/null; then fail "peer still running after its removal"; fi

step "dfdaemon in the peer's place"
/etc/init.d/dragonfly-dfdaemon start
wait_http http://127.0.0.1:65002/healthz 30
python3 -c 'import socket; socket.create_connection(("127.0.0.1", 65001), 5).close()' \
    || fail "dfdaemon mirror port"
rm -f "$WORK/out/blob.bin"
(cd "$WORK/out" && /usr/bin/dfget "http://127.0.0.1:$ORIGIN_PORT/blob.bin" -O blob.bin)
cmp "$WORK/origin/blob.bin" "$WORK/out/blob.bin" || fail "file via the dfdaemon differs"

# --- 3. remove (daemons stop), purge (nothing left) -------------------------
step "apt-get remove, with supernode and dfdaemon running"
rm -f /etc/default/dragonfly-supernode /etc/default/dragonfly-peer /etc/default/dragonfly-dfdaemon
DEBIAN_FRONTEND=noninteractive apt-get remove -y -q $PACKAGES >"$WORK/remove.log" 2>&1 \
    || { cat "$WORK/remove.log"; fail "apt-get remove"; }
assert_no_process 5 "apt-get remove"
[ -e /opt/dragonfly ] && { find /opt/dragonfly | head; fail "files left in /opt/dragonfly after remove"; }

step "apt-get purge"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $PACKAGES >"$WORK/purge.log" 2>&1 \
    || { cat "$WORK/purge.log"; fail "apt-get purge"; }
for d in /opt/dragonfly /etc/dragonfly /var/lib/dragonfly /run/dragonfly /var/log/dragonfly; do
    [ -e "$d" ] && { find "$d" | head; fail "$d left after purge"; }
done
for p in $PACKAGES; do installed "$p" && fail "$p still known to dpkg"; done
getent passwd dragonfly >/dev/null && fail "user dragonfly left after purge"
getent group dragonfly >/dev/null && fail "group dragonfly left after purge"
ls /etc/rc*.d/*dragonfly* >/dev/null 2>&1 && fail "rc links left after purge"
kill "$ORIGIN_PID" && wait "$ORIGIN_PID" 2>/dev/null || true
ORIGIN_PID=""

# --- 4. the RPMs -------------------------------------------------------------
step "rpmbuild -bb --nodeps (with %check)"
rpmbuild -bb --nodeps --define "_topdir $WORK/rpmbuild" --define '_binary_payload w1.gzdio' \
    "$ROOT/packaging/rpm/dragonfly.spec" >"$WORK/rpm-build.log" 2>&1 \
    || { tail -n 40 "$WORK/rpm-build.log"; fail "rpmbuild"; }
grep "^PASSED\|check-venv.sh: .* ok" "$WORK/rpm-build.log"
rpm=$(ls "$WORK"/rpmbuild/RPMS/*/dragonfly-0.1.0-*.rpm)
grep -q "^python(abi) = 3\." <<<"$(rpm -qp --requires "$rpm" 2>/dev/null)" || fail "RPM without python(abi)"
for role in $ROLES; do ls "$WORK"/rpmbuild/RPMS/*/dragonfly-$role-0.1.0-*.rpm >/dev/null; done
grep -q "^/opt/dragonfly/pyvenv.cfg " <<<"$(rpm -qp --dump "$rpm" 2>/dev/null)" || fail "no pyvenv.cfg in the RPM"
