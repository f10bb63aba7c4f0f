"""C{python -m dragonfly.dfctl}: the same as the C{dfctl} console script."""
from dragonfly.dfctl.cli import run

run()
