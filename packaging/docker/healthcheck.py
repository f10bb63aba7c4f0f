"""The image's HEALTHCHECK: GET /healthz of the role this container runs.

The role is read from PID 1's command line (``twistd ... supernode|peer|dfdaemon``)
and mapped to its default API port; ``DRAGONFLY_HEALTHZ`` (a full URL) overrides
it for a role listening elsewhere. Exit 0 on a 200, 1 otherwise. Standard
library only: the image has no curl.
"""
import os
import sys
import urllib.request

PORTS = {"supernode": 8002, "dfdaemon": 65001, "peer": 65002}


def healthz_url(argv, environ):
    """The URL to probe for a container whose PID 1 runs C{argv}, or None."""
    if environ.get("DRAGONFLY_HEALTHZ"):
        return environ["DRAGONFLY_HEALTHZ"]
    for word in argv:
        if word in PORTS:
            return f"http://127.0.0.1:{PORTS[word]}/healthz"
    return None


def main(cmdline_path="/proc/1/cmdline", environ=os.environ):
    try:
        with open(cmdline_path, "rb") as f:
            argv = f.read().decode("utf-8", "replace").split("\0")
    except OSError:
        argv = []
    url = healthz_url(argv, environ)
    if url is None:
        print("healthcheck: no role in PID 1's command line; set DRAGONFLY_HEALTHZ", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return 0 if answer.status == 200 else 1
    except (OSError, ValueError) as e:
        print(f"healthcheck: {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
