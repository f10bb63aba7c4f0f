#!/bin/sh
# Writes containerd's hosts.toml on this node for every registry in
# $MIRROR_REGISTRIES (space-separated NAME=SERVER, e.g.
# "docker.io=https://registry-1.docker.io ghcr.io=https://ghcr.io"), each
# pointing pulls at the node-local dfdaemon ($MIRROR_URL) before the registry:
#   $CERTS_DIR/NAME/hosts.toml
# A hosts.toml this script did not write (no marker line) is left as it is.
# containerd reads these files at each pull: no restart is needed, and when
# the mirror does not answer containerd goes to the registry itself.
set -eu
: "${MIRROR_REGISTRIES:?set MIRROR_REGISTRIES to NAME=SERVER ...}"
certs_dir=${CERTS_DIR:-/host/etc/containerd/certs.d}
mirror=${MIRROR_URL:-http://127.0.0.1:65001}
marker="# written by dragonfly's containerd-hosts init container"
umask 022
for entry in $MIRROR_REGISTRIES; do
  name=${entry%%=*}
  server=${entry#*=}
  case "$name" in
    ""|.*|*/*|*" "*) echo "bad registry name: '$name'" >&2; exit 1 ;;
  esac
  case "$server" in
    http://*|https://*) ;;
    *) echo "$name: server must be an http(s) URL, not '$server'" >&2; exit 1 ;;
  esac
  file="$certs_dir/$name/hosts.toml"
  if [ -e "$file" ] && [ "$(head -n 1 "$file")" != "$marker" ]; then
    echo "$file: written by someone else, left as it is"
    continue
  fi
  mkdir -p "$certs_dir/$name"
  printf '%s\nserver = "%s"\n\n[host."%s"]\n  capabilities = ["pull", "resolve"]\n' \
    "$marker" "$server" "$mirror" > "$file.tmp"
  mv -f "$file.tmp" "$file"
  echo "$file: pulls go to $mirror first, then $server"
done
