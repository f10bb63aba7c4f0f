"""C{python -m dragonfly}: what to run. The package is a library of twistd
plugins and command-line tools, not one program; this names them."""
import os
import sys
import sysconfig

from dragonfly import __version__

# (command, what it is); "{bin}" becomes the directory of the installed scripts
# when that directory is not on PATH (e.g. the packages' /opt/dragonfly/bin).
COMMANDS = [
    ("{bin}twistd -n supernode", "tracker, scheduler and CDN seed (API tcp:8002, pieces tcp:8001)"),
    ("{bin}twistd -n peer", "per-host agent (pieces tcp:65000, local API 127.0.0.1:65002)"),
    ("{bin}twistd -n dfdaemon", "a peer plus a registry mirror on tcp:65001"),
    ("{bin}dfget URL -O FILE", "download a file through the local peer"),
    ("{bin}dfctl task|preheat|cluster", "list and remove tasks, preheat, cluster state"),
    ("{bin}dragonfly-pki init|issue", "make the CA and node certificates for mutual TLS"),
]


def usage(scripts_dir, path):
    """The text C{python -m dragonfly} prints, for scripts installed in
    C{scripts_dir} and a C{PATH} of C{path}."""
    on_path = os.path.normpath(scripts_dir) in (
        os.path.normpath(p) for p in path.split(os.pathsep) if p)
    prefix = "" if on_path else os.path.join(scripts_dir, "")
    rows = [(cmd.format(bin=prefix), what) for cmd, what in COMMANDS]
    width = max(len(cmd) for cmd, _ in rows)
    lines = [f"dragonfly {__version__}: P2P file and container-image distribution.",
             "It is run as these commands:", ""]
    lines += [f"  {cmd.ljust(width)}  {what}" for cmd, what in rows]
    lines += ["", "Each role reads /etc/dragonfly/<role>.toml when it exists; "
              "`twistd <role> --help`, `dfget --help` and `dfctl --help` list the options."]
    return "\n".join(lines) + "\n"


def main(argv=None, out=None):
    """Print L{usage} (or the version for C{--version}); 0, or 2 for an
    unknown argument."""
    argv = sys.argv[1:] if argv is None else argv
    out = out or sys.stdout
    if argv in ([], ["-h"], ["--help"]):
        out.write(usage(sysconfig.get_path("scripts"), os.environ.get("PATH", "")))
        return 0
    if argv == ["--version"]:
        out.write(f"dragonfly {__version__}\n")
        return 0
    sys.stderr.write("usage: python -m dragonfly [--help | --version]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
