"""Write the man pages of the three twistd roles, dragonfly-<role>.8, from
their twistd Options (each option's help text and default) and the texts
below. Run after changing a role's options:

    PYTHONPATH=. python3 packaging/man/roles.py

dragonfly.test.test_packaging checks that every option is in its page.
"""
import os
import sys

from dragonfly import __version__
from dragonfly.dfdaemon.tap import Options as DfdaemonOptions
from dragonfly.peer.tap import Options as PeerOptions
from dragonfly.supernode.tap import Options as SupernodeOptions

ROLES = {
    "supernode": (SupernodeOptions, "tracker, scheduler and CDN seed of dragonfly",
                  "API tcp:8002, pieces tcp:8001"),
    "peer": (PeerOptions, "per-host P2P agent of dragonfly",
             "pieces tcp:65000, local API for dfget 127.0.0.1:65002"),
    "dfdaemon": (DfdaemonOptions, "dragonfly peer plus container registry mirror",
                 "mirror tcp:65001, and the peer's ports"),
}


def roff(text):
    """C{text} escaped for roff: backslashes, leading dots and quotes, hyphens."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def options_of(cls):
    """(name, takes a value, help text, default) of each option, sorted, once."""
    opts = cls()
    seen = {}
    for spec in opts.longOpt:
        name = spec.rstrip("=")
        if name in ("help", "version") or name in seen:
            continue
        doc = " ".join((opts.docs.get(name) or "").split())
        default = opts.defaults.get(name.replace("-", "_"), opts.defaults.get(name))
        seen[name] = (name, spec.endswith("="), doc, default)
    return [seen[n] for n in sorted(seen)]


def page(role):
    cls, summary, ports = ROLES[role]
    name = f"dragonfly-{role}"
    out = [f'.TH {name.upper()} 8 "2026" "dragonfly {__version__}" "System Administration"',
           ".SH NAME", f"{roff(name)} \\- {roff(summary)}",
           ".SH SYNOPSIS", f".B twistd\n[\\fB\\-n\\fR] [\\fItwistd options\\fR] \\fB{role}\\fR"
           " [\\fIoptions\\fR]",
           ".br", f".B service {roff(name)}\n\\fBstart\\fR|\\fBstop\\fR|\\fBrestart\\fR|"
           "\\fBstatus\\fR",
           ".br", f".B systemctl\n\\fBstart\\fR|\\fBstop\\fR|\\fBstatus\\fR {roff(name)}",
           ".SH DESCRIPTION", roff(" ".join(cls.longdesc.split())),
           ".PP", f"Default ports: {roff(ports)}. The packages run it as the "
           "\\fBdragonfly\\fR user, from the systemd unit or the SysV init script of "
           f"the same name; \\fBtwistd \\-n {role}\\fR runs it in the foreground.",
           ".SH OPTIONS",
           f"Every option can also be set in \\fI/etc/dragonfly/{role}.toml\\fR (read "
           "when it exists; the key is the option's long name); an option given on "
           "the command line wins. Sizes and rates take K/M/G/T suffixes."]
    for opt, takes_value, doc, default in options_of(cls):
        flag = f"\\fB\\-\\-{roff(opt)}\\fR" + ("=\\fIVALUE\\fR" if takes_value else "")
        text = roff(doc)
        if takes_value and default not in (None, "", []) and "[default" not in doc:
            text += f" Default: {roff(str(default))}."
        out += [".TP", flag, text]
    out += [".SH FILES",
            ".TP", f"\\fI/etc/dragonfly/{role}.toml\\fR", "Settings.",
            ".TP", f"\\fI/etc/default/{roff(name)}\\fR, \\fI/etc/sysconfig/{roff(name)}\\fR",
            "Extra command-line flags in \\fBDRAGONFLY_ARGS\\fR.",
            ".TP", f"\\fI/var/lib/dragonfly/{role}\\fR", "Cached pieces and metadata.",
            ".TP", f"\\fI/var/log/dragonfly/{role}.log\\fR",
            "Log under the SysV script (twistd rotates it at 1 MB and on SIGUSR1); "
            "under systemd the journal has it.",
            ".TP", f"\\fI/run/dragonfly/{role}.pid\\fR", "Pid file under the SysV script.",
            ".SH SIGNALS",
            ".TP", "SIGTERM", "Stop cleanly: close the ports, flush metadata; exit status 0 "
            "(1 when a part of the stop failed).",
            ".TP", "SIGHUP", "Reload the TLS certificate, key and CA files.",
            ".TP", "SIGUSR1", "Rotate the log file.",
            ".SH SEE ALSO",
            ", ".join(f"\\fB{roff(p)}\\fR({s})" for p, s in
                      [(f"dragonfly-{r}", 8) for r in ROLES if r != role]
                      + [("dfget", 1), ("dfctl", 1), ("twistd", 1)]),
            ".PP", "\\fI/usr/share/doc/dragonfly/operations.md\\fR"]
    return "\n".join(out) + "\n"


def main(directory=None):
    directory = directory or os.path.dirname(os.path.abspath(__file__))
    for role in ROLES:
        with open(os.path.join(directory, f"dragonfly-{role}.8"), "w") as f:
            f.write(page(role))


if __name__ == "__main__":
    main(*sys.argv[1:])
