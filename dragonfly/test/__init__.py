"""dragonfly's tests: unit tests here, real-process tests in integration/."""
import os

from twisted.trial.unittest import SkipTest


def source_file(*parts):
    """Path of a file of the source tree (etc/, docs/), for tests that check them.

    ``make test`` runs the installed package and names the tree in
    C{DRAGONFLY_SOURCE}; from a checkout the tree is found beside the package.
    """
    roots = [os.environ.get("DRAGONFLY_SOURCE"),
             os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")]
    for root in roots:
        if root and os.path.exists(os.path.join(root, *parts)):
            return os.path.join(root, *parts)
    if os.environ.get("DRAGONFLY_SOURCE"):
        raise AssertionError(f"{os.path.join(*parts)} missing from {os.environ['DRAGONFLY_SOURCE']}")
    raise SkipTest(f"{os.path.join(*parts)} not found (installed package, DRAGONFLY_SOURCE unset)")


def short_dir(case):
    """A fresh directory with a short path, removed after C{case}: a unix
    socket's path has 107 bytes at most, which trial's temp paths exceed."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="df-")
    case.addCleanup(shutil.rmtree, d, True)
    return d
